"""Packaging for tensorguard_sim (ament_python)."""
from setuptools import find_packages, setup

PACKAGE = 'tensorguard_sim'

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
    description='Simulated robots, simulated fleet runner and replay of TensorGuard.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'sim_robot = tensorguard_sim.sim_robot:main',
            'simulated_fleet = tensorguard_sim.simulated_fleet:main',
            'fleet_replay = tensorguard_sim.fleet_replay:main',
        ],
    },
)
