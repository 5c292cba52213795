"""Packaging for tensorguard_ros (ament_python)."""
from setuptools import find_packages, setup

PACKAGE = 'tensorguard_ros'

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
    description='Topic names, QoS profiles, parameter declaration and diagnostics shared by TensorGuard nodes.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'transport_check = tensorguard_ros.transport_check:main',
        ],
    },
)
