"""Packaging for tensorguard_crypto (ament_python)."""
from setuptools import find_packages, setup

PACKAGE = 'tensorguard_crypto'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        ('bin', ['bin/tensorguard']),  # on PATH via colcon's hook for install/<pkg>/bin (the console script is in lib/)
    ],
    install_requires=['setuptools', 'numpy', 'cryptography', 'msgpack'],
    zip_safe=True,
    maintainer='TensorGuard developers',
    maintainer_email='dev@tensorguard.invalid',
    description='Secure aggregation, Skellam DP, identities, wire format and KMS (no ROS imports).',
    license='Apache-2.0',
    extras_require={'test': ['pytest', 'hypothesis']},
    entry_points={
        'console_scripts': [
            'tensorguard = tensorguard_crypto.cli:main',
            'bench_secagg = tensorguard_crypto.bench_secagg:main',
            'privacy_table = tensorguard_crypto.privacy_table:main',
        ],
    },
)
