"""Packaging for tensorguard_flower (ament_python)."""
from setuptools import find_packages, setup

PACKAGE = 'tensorguard_flower'

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
    description='TensorGuard rounds on Flower: a strategy and a client app over the ROS nodes libraries.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        # Sub-commands of the `tensorguard` operator command (tensorguard_crypto.cli looks them up by name).
        'tensorguard.commands': ['flower-scale = tensorguard_flower.scale:main',
                                 'flower-frontier = tensorguard_flower.frontier:main'],
    },
)
