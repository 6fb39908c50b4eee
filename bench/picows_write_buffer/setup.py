"""Builds _wbuf next to this file, against the installed picows' picows.pxd.

    pip install cython && python bench/picows_write_buffer/setup.py build_ext --inplace
"""
import os
import sys

import picows
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
os.chdir(HERE)
if len(sys.argv) == 1:
    sys.argv += ["build_ext", "--inplace"]
setup(script_args=sys.argv[1:],
      ext_modules=cythonize([Extension("_wbuf", ["_wbuf.pyx"])],
                            include_path=[os.path.dirname(os.path.dirname(picows.__file__))]))
