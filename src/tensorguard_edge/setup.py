"""Packaging for tensorguard_edge (ament_python)."""
from setuptools import find_packages, setup

PACKAGE = 'tensorguard_edge'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='TensorGuard developers',
    maintainer_email='dev@tensorguard.invalid',
    description='Edge node of TensorGuard.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'edge_node = tensorguard_edge.edge_node:main',
        ],
        # Sub-commands of the `tensorguard` operator command (tensorguard_crypto.cli looks them up by name).
        'tensorguard.commands': [
            'robot-import-bag = tensorguard_edge.commands:import_bag_command',
            'robot-export-dataset = tensorguard_edge.commands:export_dataset_command',
        ],
    },
)
