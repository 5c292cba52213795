"""Packaging for tensorguard_policy (ament_python)."""
from setuptools import find_packages, setup

PACKAGE = 'tensorguard_policy'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
    ],
    install_requires=['setuptools', 'numpy', 'torch', 'pyyaml'],
    zip_safe=True,
    maintainer='TensorGuard developers',
    maintainer_email='dev@tensorguard.invalid',
    description="The robot's policy node: runs the fleet's verified model within the operating envelope.",
    license='Apache-2.0',
    extras_require={'test': ['pytest', 'hypothesis']},
    entry_points={
        'console_scripts': [
            'policy_node = tensorguard_policy.policy_node:main',
            'bench_policy_latency = tensorguard_policy.bench_latency:main',
        ],
    },
)
