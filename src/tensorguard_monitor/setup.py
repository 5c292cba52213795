"""Packaging for tensorguard_monitor (ament_python)."""
from setuptools import find_packages, setup

PACKAGE = 'tensorguard_monitor'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    package_data={PACKAGE: ['assets/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/prometheus', ['prometheus/alerts.yaml']),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='TensorGuard developers',
    maintainer_email='dev@tensorguard.invalid',
    description='Fleet-state model, web dashboard and Prometheus metrics of TensorGuard.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'dashboard = tensorguard_monitor.dashboard_node:main',
            'screenshot = tensorguard_monitor.screenshot:main',
        ],
        # Sub-commands of the `tensorguard` operator command (tensorguard_crypto.cli looks them up by name).
        'tensorguard.commands': [
            'dashboard = tensorguard_monitor.dashboard_node:command',
        ],
    },
)
