"""Resolve S3Proxy from Maven Central once, run it on a free loopback port, stop it (D36).

``ensure_s3proxy`` copies ``org.gaul:s3proxy`` and its dependencies into
``<s3proxy_home>/<version>/libs`` with ``mvn dependency:copy-dependencies`` (a
marker file afterwards means no network later), as the Kafka install does.
:class:`LocalS3` starts ``org.gaul.s3proxy.Main`` with the ``filesystem-nio2``
backend in a directory of the caller's, waits until it answers an S3 call,
and stops exactly the process it started (SIGTERM, then SIGKILL). It is what
the tests, the benches and ``taskstream storage local`` use; production points
``storage_endpoint`` at a real S3-compatible service.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from taskstream.localkafka.cluster import free_port_block
from taskstream.localkafka.install import MAVEN_TIMEOUT_S, find_java, find_maven, locked
from taskstream.locals3.errors import LocalS3Error
from taskstream.settings import Settings

START_TIMEOUT_S = 60.0
_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.taskstream</groupId>
  <artifactId>s3proxy-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.gaul</groupId><artifactId>s3proxy</artifactId>
      <version>{version}</version></dependency>
  </dependencies>
</project>
"""
_LOGBACK = """<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{log}</file>
    <encoder><pattern>%d %level %logger{{20}} - %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="FILE"/></root>
</configuration>
"""


def ensure_s3proxy(home: Path, version: str, *, show_progress: bool = True) -> Path:
    """The directory of S3Proxy's jars, resolved with Maven the first time."""
    root = home / version
    libs, marker = root / "libs", root / ".complete"
    if marker.exists():
        return libs
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / ".lock", timeout=MAVEN_TIMEOUT_S):
        if not marker.exists():
            _resolve(root, libs, version, show_progress)
            marker.write_text(f"s3proxy {version}\n")
    return libs


def _resolve(root: Path, libs: Path, version: str, show_progress: bool) -> None:
    pom = root / "pom.xml"
    pom.write_text(_POM.format(version=version))
    cmd = [find_maven(), "-B", "-f", str(pom), "dependency:copy-dependencies",
           f"-DoutputDirectory={libs}"]
    if show_progress:
        print(f"Resolving S3Proxy {version} with Maven into {libs} (once)...", flush=True)
    with open(root / "maven.log", "wb") as out:
        try:
            proc = subprocess.run(cmd, stdout=None if show_progress else out,
                                  stderr=None if show_progress else subprocess.STDOUT,
                                  timeout=MAVEN_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise LocalS3Error(f"Maven did not resolve S3Proxy {version} within "
                               f"{MAVEN_TIMEOUT_S:.0f}s; check access to Maven Central") from None
    if proc.returncode != 0 or not any(libs.glob("s3proxy-*.jar")):
        raise LocalS3Error(f"Maven could not resolve org.gaul:s3proxy:{version} (exit "
                           f"{proc.returncode}); see {root / 'maven.log'} and retry")


def free_port() -> int:
    """A free port on 127.0.0.1, outside the ephemeral range (as every local service's)."""
    return free_port_block(1)


@dataclass
class LocalS3:
    """One S3Proxy process on 127.0.0.1 with a filesystem backend under ``data_dir``."""

    data_dir: Path
    libs: Path
    port: int = field(default_factory=free_port)
    identity: str = "taskstream"
    credential: str = field(default_factory=lambda: secrets.token_hex(12))
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def install(cls, data_dir: Path, settings: Settings, *, port: int | None = None) -> LocalS3:
        libs = ensure_s3proxy(settings.s3proxy_home, settings.s3proxy_version,
                              show_progress=False)
        return cls(data_dir, libs) if port is None else cls(data_dir, libs, port)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings_env(self, bucket: str) -> dict[str, str]:
        """The TASKSTREAM_* variables that point a process at this server."""
        return {
            "TASKSTREAM_STORAGE_BUCKET": bucket,
            "TASKSTREAM_STORAGE_ENDPOINT": self.endpoint,
            "TASKSTREAM_STORAGE_ACCESS_KEY": self.identity,
            "TASKSTREAM_STORAGE_SECRET_KEY": self.credential,
        }

    def start(self, timeout: float = START_TIMEOUT_S) -> Self:
        blobs = self.data_dir / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "s3proxy.conf"
        conf.write_text("\n".join([
            f"s3proxy.endpoint={self.endpoint}",
            "s3proxy.authorization=aws-v2-or-v4",
            f"s3proxy.identity={self.identity}",
            f"s3proxy.credential={self.credential}",
            "jclouds.provider=filesystem-nio2",
            f"jclouds.filesystem.basedir={blobs}",
            "",
        ]))
        logback = self.data_dir / "logback.xml"
        logback.write_text(_LOGBACK.format(log=self.data_dir / "s3proxy.log"))
        cmd = [find_java(), "-Xmx256m", f"-Dlogback.configurationFile={logback}",
               "-cp", f"{self.libs}/*", "org.gaul.s3proxy.Main", "--properties", str(conf)]
        with open(self.data_dir / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_until_up(timeout)
        return self

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise LocalS3Error(f"S3Proxy exited with {self.process.returncode} at start; "
                                   f"see {self.data_dir / 'stdout.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise LocalS3Error(f"S3Proxy did not listen on {self.endpoint} within {timeout:.0f}s; "
                           f"see {self.data_dir / 'stdout.log'}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process this object started (and only it)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def __enter__(self) -> Self:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
