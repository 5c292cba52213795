"""Packaging for tensorguard_gateway (ament_python)."""
from setuptools import find_packages, setup

PACKAGE = 'tensorguard_gateway'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
    ],
    install_requires=['setuptools', 'eclipse-zenoh', 'pyyaml'],
    zip_safe=True,
    maintainer='TensorGuard developers',
    maintainer_email='dev@tensorguard.invalid',
    description="The Zenoh gateway between a site's DDS domain and the fleet's Zenoh network, and the fleet router.",
    license='Apache-2.0',
    extras_require={'test': ['pytest', 'hypothesis']},
    entry_points={
        'console_scripts': [
            'gateway = tensorguard_gateway.gateway_node:main',
            'gateway_router = tensorguard_gateway.router:main',
            'bench_gateway = tensorguard_gateway.bench:main',
            'bench_site_bytes = tensorguard_gateway.bench_site_bytes:main',
        ],
    },
)
