#!/usr/bin/env python
"""Install: see the README (torch first, then ``pip install --no-build-isolation -e .``)."""
import os.path as osp

from setuptools import find_packages, setup


HERE = osp.dirname(osp.abspath(__file__))


def get_requirements(filename='requirements.txt'):
    with open(osp.join(HERE, filename)) as f:
        return [line.split('#')[0].strip() for line in f if line.split('#')[0].strip()]


setup(
    name='sage-fusion',
    version='0.1.0',
    description='SAGE infrared-visible image fusion on BasicSR registries: SAM-guided teacher, '
    'distilled 0.136 M student',
    long_description=open(osp.join(HERE, 'README.md'), encoding='utf-8').read() if osp.exists(
        osp.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('options', 'datasets', 'experiments', 'results', 'tb_logger', 'tests',
                                    'scripts')),
    python_requires='>=3.9',
    install_requires=get_requirements(),
    extras_require={
        'onnx': ['onnx>=1.15', 'onnxruntime>=1.17'],
        'dev': ['pytest>=7', 'onnx>=1.15', 'onnxruntime>=1.17', 'flake8>=7', 'isort>=5'],
    },
    license='MIT',
    zip_safe=False,
)
