"""Find Java and Maven, and resolve the Apache Kafka jars once into a cache.

The jars come from Maven Central (DESIGN.md, "Local Kafka"): ``kafka_2.13`` (the
broker), ``kafka-tools`` (the CLI classes) and the two log4j2 bindings the
release tarball adds. ``mvn dependency:copy-dependencies`` puts them, with every
transitive dependency, in ``<kafka_home>/<version>/libs``; a marker file written
after Maven succeeds means later runs need no network at all.
"""

from __future__ import annotations

import fcntl
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from taskstream.errors import LocalKafkaError

LOG4J_VERSION = "2.25.2"
MIN_JAVA = 17
MAVEN_TIMEOUT_S = 1200.0
_INSTALL_HINT = (
    "install it (Debian/Ubuntu: `apt-get install openjdk-17-jre-headless maven`) "
    "or run Kafka with Docker: `docker compose -f docker-compose.kafka.yml up -d`"
)

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.taskstream</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-1.2-api</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""


@dataclass(frozen=True)
class KafkaInstall:
    """A resolved Kafka: the java binary to run it with and its jar directory."""

    java: str
    libs: Path
    version: str

    @property
    def classpath(self) -> str:
        return f"{self.libs}/*"  # java expands the wildcard itself


def find_java() -> str:
    """The path of a Java >= 17, or LocalKafkaError saying what to install."""
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError(f"java was not found on PATH; Kafka needs Java {MIN_JAVA}+: "
                              f"{_INSTALL_HINT}")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalKafkaError(f"could not run `{java} -version` ({exc}); {_INSTALL_HINT}") from None
    major = java_major_version(out.stderr + out.stdout)
    if major is None or major < MIN_JAVA:
        found = "an unknown version" if major is None else f"Java {major}"
        raise LocalKafkaError(f"{java} is {found} but Kafka needs Java {MIN_JAVA}+: "
                              f"{_INSTALL_HINT}")
    return java


def java_major_version(version_output: str) -> int | None:
    """17 from 'openjdk version "17.0.15"', 8 from 'java version "1.8.0_392"'."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_maven() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError("mvn (Apache Maven) was not found on PATH; it fetches the Kafka "
                              f"jars once: {_INSTALL_HINT}")
    return mvn


def ensure_kafka(kafka_home: Path, version: str, *, show_progress: bool = True) -> KafkaInstall:
    """Resolve the Kafka jars into ``kafka_home/version/libs`` unless already done."""
    java = find_java()
    root = kafka_home / version
    libs, marker = root / "libs", root / ".complete"
    if marker.exists():
        return KafkaInstall(java, libs, version)
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / ".lock", timeout=MAVEN_TIMEOUT_S):
        if not marker.exists():  # another process may have finished while we waited
            _resolve_with_maven(root, libs, version, show_progress)
            marker.write_text(f"kafka {version}, log4j {LOG4J_VERSION}\n")
    return KafkaInstall(java, libs, version)


def _resolve_with_maven(root: Path, libs: Path, version: str, show_progress: bool) -> None:
    mvn = find_maven()
    pom = root / "pom.xml"
    pom.write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION))
    shutil.rmtree(libs, ignore_errors=True)
    log = root / "maven.log"
    cmd = [mvn, "-B", "-f", str(pom), "dependency:copy-dependencies",
           f"-DoutputDirectory={libs}"]
    if show_progress:
        print(f"Resolving Apache Kafka {version} jars with Maven into {libs} (once)...",
              flush=True)
    try:
        with open(log, "wb") as out:
            proc = subprocess.run(cmd, stdout=None if show_progress else out,
                                  stderr=subprocess.STDOUT if not show_progress else None,
                                  timeout=MAVEN_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LocalKafkaError(f"Maven did not finish resolving Kafka {version} within "
                              f"{MAVEN_TIMEOUT_S:.0f}s; check network access to Maven "
                              "Central and retry") from None
    if proc.returncode != 0 or not any(libs.glob("kafka_2.13-*.jar")):
        where = "its output above" if show_progress else str(log)
        raise LocalKafkaError(f"Maven could not resolve Apache Kafka {version} (exit "
                              f"{proc.returncode}); see {where}, check access to Maven Central "
                              "and retry")


@contextmanager
def locked(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive flock on ``path``, waited for at most ``timeout`` seconds."""
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LocalKafkaError(f"another process holds {path} for more than "
                                          f"{timeout:.0f}s; if none is running, delete "
                                          "that file") from None
                time.sleep(0.5)
        yield  # the lock goes with the file handle
