# iskra-me162 in a container: Debian bookworm's Python with the same Debian packages as the .deb
# (python3-serial, python3-requests, python3-daemon). Usage: README.rst, section "Docker".
#
#   docker compose up -d --build
#
# The steps are in docker/install.sh, which tests/test_docker_files.py also runs outside Docker.
FROM debian:bookworm-slim

# Only what building the package needs, so that editing tests or docs does not rebuild it.
COPY setup.py README.rst LICENSE /usr/src/iskra-me162/
COPY iskra_me162 /usr/src/iskra-me162/iskra_me162
COPY docker/install.sh /usr/src/iskra-me162/docker/install.sh
RUN sh /usr/src/iskra-me162/docker/install.sh image /usr/src/iskra-me162 \
    && rm -rf /usr/src/iskra-me162

# A working default (IR head at /dev/ttyUSB0, HTTP on 0.0.0.0:8080, no Domoticz); normally
# replaced by the file docker-compose.yml mounts here read-only.
COPY docker/iskra-me162.conf /etc/default/iskra-me162

# Unprivileged; in group dialout for the serial device (created by install.sh, uid 10162).
USER iskra-me162
EXPOSE 8080

# 503 (no fresh reading) and "connection refused" both make urlopen raise: exit status 1.
# Python, not curl or wget: the image has no HTTP client program.
HEALTHCHECK --interval=60s --timeout=10s --start-period=3m --retries=3 \
    CMD ["/usr/bin/python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=8)"]

ENTRYPOINT ["iskra-me162"]
CMD ["--config", "/etc/default/iskra-me162"]
