"""Packaging for tensorguard_rqt (ament_python; an rqt_gui_py plugin)."""
from setuptools import find_packages, setup

PACKAGE = 'tensorguard_rqt'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml', 'plugin.xml']),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='TensorGuard developers',
    maintainer_email='dev@tensorguard.invalid',
    description='rqt plugin for a TensorGuard fleet: fleet panel, robots table, confirmed actions.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
)
