"""Packaging for iskra-me162.

``VERSION`` below is the single source of the version: ``iskra-me162 --version`` reads it from the
installed package's metadata, and debian/changelog is checked against it by packaging/test-deb.sh.
"""

from setuptools import find_packages, setup

VERSION = "1.0.0"

setup(
    name="iskra-me162",
    version=VERSION,
    description=(
        "Read electricity meters (IEC 62056-21 mode C, SML) through an optical IR head "
        "and feed Domoticz and Home Assistant"
    ),
    long_description=open("README.rst", encoding="utf-8").read(),  # noqa: PTH123, SIM115
    long_description_content_type="text/x-rst",
    license="GPL-3.0-or-later",
    url="https://github.com/iskra-me162/iskra-me162",
    packages=find_packages(include=["iskra_me162", "iskra_me162.*"]),
    # 3.11: the code uses datetime.UTC, new in 3.11 (Debian 12 and Raspberry Pi OS have 3.11).
    python_requires=">=3.11",
    # requests: Domoticz (Debian 12 ships 2.28 with urllib3 1.26; both work).
    install_requires=["pyserial>=3.4", "requests>=2.28", "python-daemon>=2.2"],
    # MQTT is optional: Debian's python3-paho-mqtt (1.6) or paho-mqtt 2.x from PyPI.
    # Prometheus /metrics is optional too: Debian's python3-prometheus-client (0.16) or newer.
    extras_require={"mqtt": ["paho-mqtt>=1.6"], "metrics": ["prometheus-client>=0.16"]},
    entry_points={"console_scripts": ["iskra-me162 = iskra_me162.cli:main"]},
    classifiers=[
        "Environment :: No Input/Output (Daemon)",
        "License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Topic :: Home Automation",
    ],
)
