"""Build configuration that pyproject.toml cannot express: the optional C extension.

``wgrelay.transport._mmsg`` (recvmmsg/sendmmsg) makes the relay's UDP path
faster; it is optional: where it cannot be built (not Linux, no compiler, no
Python headers) the install goes on and the transport falls back to plain
recvfrom/sendto by itself.
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    ext_modules.append(
        Extension(
            "wgrelay.transport._mmsg",
            sources=["src/wgrelay/transport/_mmsg.c"],
            extra_compile_args=["-O2", "-Wall"],
            optional=True,
        )
    )

setup(ext_modules=ext_modules)
