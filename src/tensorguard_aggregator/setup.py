"""Packaging for tensorguard_aggregator (ament_python)."""
from setuptools import find_packages, setup

PACKAGE = 'tensorguard_aggregator'

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
    description='Aggregator, key service, evaluator and gate nodes of TensorGuard.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'aggregator = tensorguard_aggregator.aggregator_node:main',
            'key_service = tensorguard_aggregator.key_service_node:main',
            'publish_initial_model = tensorguard_aggregator.initial_model:main',
        ],
    },
)
