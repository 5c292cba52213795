"""Packaging for tensorguard_learning (ament_python)."""
from setuptools import find_packages, setup

PACKAGE = 'tensorguard_learning'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
    ],
    install_requires=['setuptools', 'numpy', 'torch', 'tqdm'],
    zip_safe=True,
    maintainer='TensorGuard developers',
    maintainer_email='dev@tensorguard.invalid',
    description='MoE adapter policy, demonstrations, training, compression, evaluation (no ROS imports).',
    license='Apache-2.0',
    extras_require={'test': ['pytest', 'hypothesis']},
    entry_points={
        'console_scripts': [
            'bench_fleet_learning = tensorguard_learning.bench_learning:main',
        ],
    },
)
