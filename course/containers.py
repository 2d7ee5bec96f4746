"""Build and run lesson 04's images on any machine: with Docker, or with no Docker daemon at all.

Course plumbing, not lesson material: with Docker installed, the commands in lesson 04's
notebook are all you type. The tests and `make image` use it, so that the real image is built,
started and called even where Docker cannot run (CI runners, sandboxes):

- `docker`, when `docker info` answers (a daemon is running);
- otherwise Podman to build and Buildah to run, both daemonless. Buildah runs the image's own
  command with the host's network (chroot isolation), so the server answers on 127.0.0.1.

When no image registry is reachable, Podman cannot pull python:3.11-slim. A stand-in is then made
once with debootstrap (Debian bookworm, whose python3 is 3.11 like the real image's) and kept in
the repository's .cache/containers with the build cache, so only the first build is slow.

The first build needs the network: for the base image (a registry, or a Debian mirror for the stand-in)
and for pip in the build. Offline, it stops with one line saying which. Later builds reuse the cache.

    .venv/bin/python -m course.containers info             # which engine this machine has, and why
    .venv/bin/python -m course.containers build http grpc  # what `make image` runs
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import psutil

from course import REPO

BASE_IMAGE = "python:3.11-slim"
BASE_IMAGE_FULL = "docker.io/library/python:3.11-slim"
# In the repository's .cache/ (git ignores it), beside the engines' virtualenvs: not the home folder, which the course
# leaves as it found it. Gigabytes once images are built: delete the folder to start over.
CACHE = REPO / ".cache" / "containers"
# Raise it when make_standin changes: a cached stand-in with another version is made again.
STANDIN_VERSION = "2"
STANDIN_TAR = CACHE / f"python-3.11-slim-standin-{STANDIN_VERSION}.tar"
# Podman's run-time state (locks, mounts): short-lived, like podman's own /run/containers, on a short
# path (podman refuses a run root longer than 50 characters), and one per cache folder.
RUN_ROOT = Path("/run/serving-course") / hashlib.sha256(str(CACHE).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ImageSpec:
    kind: str        # "http" or "grpc": how to tell that the server is up
    tag: str
    dockerfile: str  # relative to the repository root, which is the build context
    port: int        # the PORT the image sets


IMAGES = {
    "http": ImageSpec("http", "iris-api:1.0.0", "lessons/04-docker/Dockerfile", 8000),
    "grpc": ImageSpec("grpc", "iris-grpc:1.0.0", "lessons/04-docker/grpc.Dockerfile", 50051),
}


_built_by_this_process: set[str] = set()


class EngineMissing(RuntimeError):
    """This machine cannot build or run the images; the message says exactly what is missing."""


class NeedsNetwork(RuntimeError):
    """A build step had to download something and could not: one line says what, and why."""


class CommandFailed(RuntimeError):
    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output  # all of it: the message keeps the end only


def run(command: list[str], *, timeout: float = 120, check: bool = True, **options) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            cwd=options.pop("cwd", REPO), **options)
    if check and result.returncode != 0:
        raise CommandFailed(f"`{' '.join(command)}` failed with exit code {result.returncode}:\n"
                            f"{(result.stdout + result.stderr)[-4000:]}", result.stdout + result.stderr)
    return result


def free_port() -> int:
    from course.server import free_port as course_free_port
    return course_free_port()


# ---- the build context: what `docker build .` sends, after .dockerignore -------------------------

def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex, with Go's filepath.Match rules plus `**` (as Docker does)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_rules(path: Path = REPO / ".dockerignore") -> list[tuple[bool, str, re.Pattern]]:
    """(is_exception, pattern, regex) for each line; comments and blank lines skipped."""
    rules = []
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((exception, pattern, _pattern_regex(pattern)))
    return rules


def is_ignored(relative: str, rules) -> bool:
    """Docker's rule: the last pattern that matches the path, or one of its parent folders, wins."""
    parents = relative.split("/")[:-1]
    ignored = False
    for exception, _, regex in rules:
        if exception != ignored:  # an exception can only un-ignore, a pattern only ignore
            continue
        if regex.fullmatch(relative) or any(regex.fullmatch("/".join(parents[:i + 1])) for i in range(len(parents))):
            ignored = not exception
    return ignored


def build_context(root: Path = REPO, rules=None) -> list[Path]:
    """The files `docker build` would send from `root` (relative paths), given .dockerignore rules."""
    rules = dockerignore_rules(root / ".dockerignore") if rules is None else rules
    exceptions = [pattern for exception, pattern, _ in rules if exception]
    files = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder).relative_to(root)
        # Skip ignored folders, unless an exception pattern reaches inside them.
        dirs[:] = [d for d in dirs if not (is_ignored((here / d).as_posix(), rules) and not any(
            p.startswith((here / d).as_posix() + "/") or p.startswith("**") for p in exceptions))]
        files += [here / n for n in names if not is_ignored((here / n).as_posix(), rules)]
    return sorted(files)


# ---- choosing an engine --------------------------------------------------------------------------

def detect() -> "Engine":
    """Docker if its daemon answers, else Podman + Buildah; EngineMissing says what is missing."""
    docker = shutil.which("docker")
    if docker:
        answer = run([docker, "info", "--format", "{{.ServerVersion}}"], check=False, timeout=30)
        if answer.returncode == 0:
            return Docker(docker)
        docker_problem = "Docker is installed but its daemon does not answer"
        fix = "start Docker"
    else:
        docker_problem = "Docker is not installed"
        fix = "install Docker (https://docs.docker.com/get-docker/)"
    missing = [tool for tool in ("podman", "buildah") if not shutil.which(tool)]
    if missing:  # one line, as the test summary shows it: what is missing, then what to install
        raise EngineMissing(
            f"{docker_problem}, and neither is the daemonless fallback ({' and '.join(missing)} not found): "
            f"{fix}, or on Linux install Podman and Buildah (Debian/Ubuntu: sudo apt-get install podman buildah "
            "debootstrap; Fedora: sudo dnf install podman buildah)")
    if os.geteuid() != 0:
        raise EngineMissing(
            f"{docker_problem}, and the daemonless fallback (podman and buildah, installed) runs them as root "
            f"(chroot isolation, host network), which this user is not: {fix}, or run as root")
    return Podman()


class Engine:
    name = "?"

    def build_command(self, spec: ImageSpec) -> list[str]:
        raise NotImplementedError

    def build(self, spec: ImageSpec) -> tuple[float, str]:
        """Build the image (reusing cached layers); returns (seconds, the build's output).

        Raises NeedsNetwork when what failed was a download (the base image, or pip in the build)."""
        self.prepare()
        started = time.monotonic()
        try:
            result = run(self.build_command(spec), timeout=1800)
        except CommandFailed as failed:
            needs = network_problem(failed.output, spec)
            if needs:
                raise NeedsNetwork(needs) from None
            raise
        _built_by_this_process.add(spec.tag)
        return time.monotonic() - started, result.stdout + result.stderr

    def ensure_built(self, spec: ImageSpec) -> None:
        """Build unless this process already did (even a cached build checks every layer: seconds)."""
        if spec.tag not in _built_by_this_process:
            self.build(spec)

    def prepare(self) -> None:
        """Whatever must exist before a build (the base image)."""

    def exists(self, tag: str) -> bool:
        return run([*self.images_cli, "image", "inspect", tag], check=False).returncode == 0

    def inspect(self, tag: str) -> dict:
        """Size in bytes, and the config Docker and Podman agree on: Cmd, Env, User, Healthcheck..."""
        data = json.loads(run([*self.images_cli, "image", "inspect", tag]).stdout)[0]
        config = dict(data.get("Config") or {})
        config.setdefault("Healthcheck", data.get("Healthcheck"))  # Podman keeps it beside Config
        return {"size": int(data["Size"]), "config": config}

    def history(self, tag: str) -> list[tuple[int, str]]:
        """(bytes, instruction) for each layer, newest first, as `docker history` shows them."""
        listed = run([*self.images_cli, "history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", tag])
        layers = []
        for line in listed.stdout.splitlines():
            size, _, created_by = line.partition("\t")
            number, unit = re.fullmatch(r"([\d.]+)\s*([kKMG]?B)", size.strip()).groups()
            scale = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
            created_by = re.sub(r"^/bin/sh -c (#\(nop\) )?", "", created_by)
            layers.append((int(float(number) * scale), re.sub(r"(file|dir|multi):([0-9a-f]{12})[0-9a-f]+", r"\1:\2", created_by)))
        return layers

    def start(self, spec: ImageSpec, *, env: dict | None = None, command: list[str] | None = None,
              wait: bool = True, timeout: float = 60) -> "Container":
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class Docker(Engine):
    name = "docker"

    def __init__(self, executable: str = "docker"):
        self.images_cli = [executable]

    def build_command(self, spec: ImageSpec) -> list[str]:
        return [*self.images_cli, "build", "-f", spec.dockerfile, "-t", spec.tag, "."]

    def start(self, spec, *, env=None, command=None, wait=True, timeout=60):
        port = free_port()
        name = _container_name(spec)
        settings = {"PORT": str(port), **(env or {})}
        flags = [f"--env={key}={value}" for key, value in settings.items()]
        started = time.monotonic()
        run([*self.images_cli, "run", "--detach", "--name", name, "--publish", f"127.0.0.1:{port}:{port}",
             *flags, spec.tag, *(command or [])])
        container = DockerContainer(self, spec, name, port, started, settings)
        return container.wait_ready(timeout) if wait else container


class Podman(Engine):
    """Podman builds, Buildah runs: no daemon, no registry needed, chroot isolation, host network."""

    name = "podman+buildah"

    def __init__(self):
        self.driver = _storage_driver()
        # ("store-", not the "storage-" of earlier versions: podman's database remembers its run root.)
        store = ["--root", str(CACHE / f"store-{self.driver}"), "--runroot", str(RUN_ROOT / self.driver),
                 "--storage-driver", self.driver]
        self.images_cli = ["podman", *store]
        self.buildah = ["buildah", *store]

    def describe(self) -> str:
        return f"podman+buildah (no Docker daemon; {self.driver} storage in {CACHE})"

    def build_command(self, spec: ImageSpec) -> list[str]:
        # --format docker: the OCI format has no HEALTHCHECK, Podman would drop it.
        # The pip settings of this machine go in as read-only mounts, so pip in the build reaches
        # the package index the same way pip on the host does (index, proxy CA bundle).
        mounts = [f"--volume={host}:{inside}:ro" for host, inside in pip_mounts()]
        return [*self.images_cli, "build", "--isolation", "chroot", "--network", "host", "--pull=never",
                "--format", "docker", *mounts, "-f", spec.dockerfile, "-t", spec.tag, "."]

    def prepare(self) -> None:
        if self.exists(BASE_IMAGE_FULL) and not self._outdated_standin():
            return
        pulled = run([*self.images_cli, "pull", BASE_IMAGE_FULL], check=False, timeout=600)
        if pulled.returncode == 0:
            return
        if not STANDIN_TAR.exists():
            try:
                make_standin(STANDIN_TAR, reason=pulled.stderr.strip().splitlines()[-1:])
            except CommandFailed as failed:
                cause = network_cause(pulled.stderr) or network_cause(failed.output)
                if cause:
                    raise NeedsNetwork(f"building the image needs network for the base image {BASE_IMAGE} (a "
                                       f"registry, or a Debian mirror to make a local stand-in): {cause}") from None
                raise
        run([*self.images_cli, "import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]',
             "--change", f"LABEL course.standin={STANDIN_VERSION}", str(STANDIN_TAR), BASE_IMAGE_FULL],
            timeout=600)

    def _outdated_standin(self) -> bool:
        """True (and the image removed) if python:3.11-slim here is a stand-in of an older version.
        Stand-ins carry our label; the very first ones had none, but, unlike the real image, a
        single layer. A pulled image is never touched."""
        data = json.loads(run([*self.images_cli, "image", "inspect", BASE_IMAGE_FULL]).stdout)[0]
        labels = (data.get("Config") or {}).get("Labels") or {}
        standin = "course.standin" in labels or len(data["RootFS"]["Layers"]) == 1
        if not standin or labels.get("course.standin") == STANDIN_VERSION:
            return False
        run([*self.images_cli, "rmi", "--force", BASE_IMAGE_FULL])
        return True

    def start(self, spec, *, env=None, command=None, wait=True, timeout=60):
        _remove_stale_containers(self)
        name = _container_name(spec)
        run([*self.buildah, "from", "--pull=never", "--name", name, spec.tag])
        config = self.inspect(spec.tag)["config"]
        argv = command or [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
        port = free_port()
        settings = {"PORT": str(port), **(env or {})}
        log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        started = time.monotonic()
        # buildah applies the image's Env, WorkingDir and User; we add PORT like `docker run -e`.
        process = subprocess.Popen(
            [*self.buildah, "run", "--isolation", "chroot", "--network", "host",
             *[f"--env={key}={value}" for key, value in settings.items()], name, "--", *argv],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
        container = BuildahContainer(self, spec, name, port, started, settings, process, Path(log.name))
        return container.wait_ready(timeout) if wait else container


# ---- a running container -------------------------------------------------------------------------

_running: set["Container"] = set()
_names = itertools.count(1)


def _container_name(spec: ImageSpec) -> str:
    return f"course-{spec.kind}-{os.getpid()}-{next(_names)}"


class ContainerFailed(RuntimeError):
    pass


class Container:
    host = "127.0.0.1"

    def __init__(self, engine, spec, name, port, started, env):
        self.engine, self.spec, self.name, self.port, self.env = engine, spec, name, port, env
        self.started = started  # time.monotonic() just before the engine was asked to start it
        self.ready_after: float | None = None
        self.exit_code: int | None = None
        _running.add(self)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def is_ready(self) -> bool:
        from course.server import grpc_ready, http_ready
        return (grpc_ready if self.spec.kind == "grpc" else http_ready())(self)

    def wait_ready(self, timeout: float = 60) -> "Container":
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if not self.running():
                self.stop()
                raise ContainerFailed(f"{self.name} exited before it was ready. Its log:\n{self.logs()}")
            if self.is_ready():
                self.ready_after = time.monotonic() - self.started
                return self
            time.sleep(0.05)
        self.stop()
        raise ContainerFailed(f"{self.name} did not answer on port {self.port} within {timeout} s:\n{self.logs()}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"<container {self.name} from {self.spec.tag} on {self.address}>"


class DockerContainer(Container):
    def _docker(self, *args, **options):
        return run([*self.engine.images_cli, *args], **options)

    def running(self) -> bool:
        state = self._docker("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return state.stdout.strip() == "true"

    def logs(self) -> str:
        if self.exit_code is not None:
            return self._final_logs  # the container is gone; these are its last words
        result = self._docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, command: list[str], env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        flags = [f"--env={key}={value}" for key, value in {**self.env, **(env or {})}.items()]
        return self._docker("exec", *flags, self.name, *command, check=False, timeout=timeout)

    def server_uid(self) -> int:
        """The real user id of the server process (PID 1 in the container). Read inside the container, whose
        kernel is Linux wherever Docker runs (Docker Desktop runs a Linux VM): nothing is read on the host."""
        status = self.exec(["cat", "/proc/1/status"]).stdout
        return int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))

    def stop(self, grace: int = 10) -> int | None:
        """`docker stop`: SIGTERM to PID 1, SIGKILL after `grace` seconds. Returns the exit code."""
        if self in _running:
            _running.discard(self)
            self._docker("stop", "--time", str(grace), self.name, check=False, timeout=grace + 30)
            code = self._docker("inspect", "--format", "{{.State.ExitCode}}", self.name, check=False).stdout.strip()
            self._final_logs = self.logs()
            self.exit_code = int(code) if code.lstrip("-").isdigit() else -1
            self._docker("rm", "--force", self.name, check=False)
        return self.exit_code


class BuildahContainer(Container):
    def __init__(self, engine, spec, name, port, started, env, process, log_path):
        super().__init__(engine, spec, name, port, started, env)
        self.process, self.log_path = process, log_path
        self._final_logs: str | None = None  # once stopped, the log is kept here and its file deleted

    def running(self) -> bool:
        return self.process.poll() is None

    def logs(self) -> str:
        if self._final_logs is not None:
            return self._final_logs
        return self.log_path.read_text(errors="replace")

    def exec(self, command: list[str], env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """Another process in the same container: same files, image config, network; like `docker exec`."""
        flags = [f"--env={key}={value}" for key, value in {**self.env, **(env or {})}.items()]
        return run([*self.engine.buildah, "run", "--isolation", "chroot", "--network", "host", *flags,
                    self.name, "--", *command], check=False, timeout=timeout)

    def server_process(self):
        """The image's command itself, below buildah's own helper processes."""
        import psutil
        for child in psutil.Process(self.process.pid).children(recursive=True):
            if not child.cmdline()[0].startswith("buildah"):  # buildah re-executes itself twice
                return child
        raise ContainerFailed(f"no server process under buildah in {self.name}")

    def server_uid(self) -> int:
        return self.server_process().uids().real

    def stop(self, grace: int = 10) -> int | None:
        """Like `docker stop`: SIGTERM to the server itself, SIGKILL after `grace` seconds.

        (Sending SIGTERM to buildah instead would make buildah kill the server outright.)"""
        if self in _running:
            _running.discard(self)
            if self.running():
                try:
                    self.server_process().send_signal(signal.SIGTERM)
                except Exception:  # already gone, or never started
                    pass
                try:
                    self.process.wait(grace)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            self._final_logs = self.logs()
            self.log_path.unlink(missing_ok=True)  # nothing left in the temp folder
            self.exit_code = _buildah_exit_code(self.process.returncode, self._final_logs)
            run([*self.engine.buildah, "rm", self.name], check=False)
        return self.exit_code


def _buildah_exit_code(buildah_code: int, log: str) -> int:
    """The command's exit status, as Docker would report it (128 + signal when killed by one)."""
    if buildah_code == 0:
        return 0
    # buildah reports the command's fate, then its own ("...exited with status 1") after a signal.
    killed = re.findall(r"subprocess exited on (\w+)", log)
    if killed:
        names = {"terminated": signal.SIGTERM, "killed": signal.SIGKILL, "interrupt": signal.SIGINT}
        return 128 + int(names.get(killed[0], 0))
    status = re.findall(r"subprocess exited with status (\d+)", log)
    if status:
        return int(status[0])
    return buildah_code


def _remove_stale_containers(engine: Podman) -> None:
    """Working containers left by a test run that crashed (their pid is gone)."""
    listed = run([*engine.buildah, "containers", "--format", "{{.ContainerName}}"], check=False).stdout.split()
    for name in listed:
        match = re.fullmatch(r"course-\w+-(\d+)-\d+", name)
        if match and not psutil.pid_exists(int(match.group(1))):
            run([*engine.buildah, "rm", name], check=False)


@atexit.register
def _stop_all() -> None:
    for container in list(_running):
        container.stop(grace=3)


# ---- the daemonless fallback's plumbing ------------------------------------------------------------

def _storage_driver() -> str:
    """overlay when the kernel lets us mount it (fast), else vfs (always works, copies every layer)."""
    if os.environ.get("COURSE_STORAGE_DRIVER"):
        return os.environ["COURSE_STORAGE_DRIVER"]
    marker = CACHE / "storage-driver"
    if marker.exists():
        return marker.read_text().strip()
    CACHE.mkdir(parents=True, exist_ok=True)
    probe = Path(tempfile.mkdtemp(prefix="overlay-probe-", dir=CACHE))
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    run_root = Path(tempfile.mkdtemp(prefix="probe-", dir=RUN_ROOT))
    store = ["--root", str(probe / "root"), "--runroot", str(run_root), "--storage-driver", "overlay"]
    works = False
    try:
        made = run(["buildah", *store, "from", "scratch"], check=False)
        works = made.returncode == 0 and run(["buildah", *store, "mount", made.stdout.strip()],
                                             check=False).returncode == 0
        if made.returncode == 0:
            run(["buildah", *store, "rm", made.stdout.strip()], check=False)
    finally:
        run(["buildah", *store, "rm", "--all"], check=False)
        for folder in (probe, run_root):
            _unmount_below(folder)
            shutil.rmtree(folder, ignore_errors=True)
    driver = "overlay" if works else "vfs"
    marker.write_text(driver + "\n")
    return driver


# What a download that failed for want of a network looks like, in the output of pip, Docker, Podman and
# debootstrap: (regex, what to say). The first one found is the cause shown.
_OFFLINE_SIGNS = [
    (r"Network is unreachable", "network is unreachable"),
    (r"Temporary failure in name resolution|Name or service not known|nodename nor servname provided"
     r"|no such host|server misbehaving|Could not resolve host", "the name does not resolve"),
    (r"ProxyError|Unable to connect to proxy|proxyconnect", "the proxy does not answer"),
    (r"No route to host", "no route to host"),
    (r"Connection refused|connection refused", "connection refused"),
    (r"i/o timeout|ConnectTimeout|Connection timed out|Read timed out", "timed out"),
    (r"Failed getting release file", "debootstrap cannot reach the Debian mirror"),
]
_HOST = re.compile(r"host='([^']+)'|lookup ([\w.-]+)|https?://([\w.-]+)")


def network_cause(output: str) -> str | None:
    """'<host>: <what went wrong>' if this output shows a download that failed for want of a network."""
    for pattern, said in _OFFLINE_SIGNS:
        for line in output.splitlines():
            if re.search(pattern, line, re.IGNORECASE):
                host = _HOST.search(line)
                return f"{next(g for g in host.groups() if g)}: {said}" if host else said
    return None


def network_problem(build_output: str, spec: ImageSpec) -> str | None:
    """The one line to print when a build failed for want of a network (None when it failed for another reason)."""
    cause = network_cause(build_output)
    if cause is None:
        return None
    if re.search(r"failed to resolve source metadata|pinging container registry|initializing source docker:"
                 r"|error pulling image|failed to do request", build_output):
        what = f"the base image {BASE_IMAGE} (Docker Hub)"
    else:
        dockerfile = (REPO / spec.dockerfile).read_text()
        requirements = re.search(r"lessons/04-docker/requirements[\w-]*\.txt", dockerfile)
        what = f"pip to install {requirements.group() if requirements else 'the requirements'} (a package index)"
        if ":" not in cause:  # pip's older versions do not name the host they could not reach
            cause = f"{urllib.parse.urlparse(os.environ.get('PIP_INDEX_URL') or 'https://pypi.org').hostname}: {cause}"
    return f"building the image needs network for {what}: {cause}"


def pip_mounts() -> list[tuple[str, str]]:
    """(host path, container path) pairs that give pip in the build this machine's pip settings.

    `pip config list` merges every pip.conf and PIP_* variable; it is written to one file mounted as
    the build's /etc/pip.conf, and every local file it names (CA bundle, local indexes) is mounted
    at the same path. Nothing about this machine's hosts is written down here."""
    listed = run([sys.executable, "-m", "pip", "config", "list"], check=False).stdout
    sections: dict[str, dict[str, str]] = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        section, _, option = key.rpartition(".")
        section = "global" if section in (":env:", "") else section
        sections.setdefault(section, {})[option] = value.strip().strip("'\"")
    paths: set[Path] = set()
    for options in sections.values():
        for option, value in options.items():
            for word in value.split():
                local = urllib.parse.urlparse(word).path if word.startswith("file:") else word
                if local.startswith("/") and Path(local).exists():
                    # a file:// index page links to its files through "..": take the index's parent too
                    paths.add(Path(local).parent if Path(local).name == "simple" else Path(local))
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "pip.conf"
    conf.write_text("".join(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items())
                            for section, options in sections.items()))
    return [(str(conf), "/etc/pip.conf")] + [(str(p), str(p)) for p in sorted(paths)]


def _debian_mirror() -> str | None:
    """This machine's apt mirror for bookworm, if it has one; else debootstrap picks its default."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        text = source.read_text(errors="replace") if source.is_file() else ""
        if source.suffix == ".sources":  # deb822: blocks of "Key: value" lines
            for block in text.split("\n\n"):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.+)$", block, re.M))
                if "bookworm" in fields.get("Suites", "").split() and "main" in fields.get("Components", ""):
                    return fields["URIs"].split()[0]
        for line in text.splitlines():
            words = re.sub(r"\[.*?\]", "", line).split()
            if len(words) >= 4 and words[0] == "deb" and words[2] == "bookworm" and "main" in words[3:]:
                return words[1]
    return None


def make_standin(tar_path: Path, reason: list[str] = ()) -> None:
    """python:3.11-slim's stand-in: minimal Debian bookworm + python3, trimmed like the -slim images.

    Like the official image, it has no bytecode (*.pyc) and no test folders in Python's libraries:
    its Dockerfile deletes them after building Python and installs pip with --no-compile. Debian's
    packages compile everything on installation (24 MB of .pyc), so they are deleted here too."""
    why = f" ({reason[0]})" if reason else ""
    if not shutil.which("debootstrap"):
        raise EngineMissing(f"cannot get the base image {BASE_IMAGE}: no registry answered{why}, and "
                            "debootstrap (to make a local stand-in) is not installed: sudo apt-get install debootstrap")
    if os.geteuid() != 0:
        raise EngineMissing(f"cannot get the base image {BASE_IMAGE}: no registry answered{why}, and "
                            "debootstrap needs root to make a local stand-in")
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE))
    rootfs.chmod(0o755)  # it becomes the image's "/": mkdtemp's 0700 would lock out every other user
    env = dict(os.environ)
    proxy = run(["apt-config", "dump", "--format", "%v", "Acquire::http::Proxy"], check=False).stdout.strip()
    if proxy and proxy.startswith("http"):
        env["http_proxy"] = proxy
    mirror = _debian_mirror()
    try:
        run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates",
             "bookworm", str(rootfs), *([mirror] if mirror else [])], timeout=3600, env=env)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                     "usr/share/locale", "usr/share/info"):
            for entry in (rootfs / junk).glob("*"):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        for python_lib in (rootfs / "usr/lib").glob("python3*"):
            for entry in sorted(python_lib.rglob("*")):
                if entry.name in ("__pycache__", "test", "tests", "idle_test") and entry.is_dir():
                    shutil.rmtree(entry)
                elif entry.suffix == ".pyc" and entry.is_file():
                    entry.unlink()
        for link, target in (("python", "python3"), ("pip", "pip3")):
            if not (rootfs / "usr/bin" / link).exists():
                (rootfs / "usr/bin" / link).symlink_to(target)
        partial = tar_path.with_suffix(".partial")
        run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], timeout=600)
        partial.rename(tar_path)
    finally:
        _unmount_below(rootfs)
        shutil.rmtree(rootfs, ignore_errors=True)


def _unmount_below(path: Path) -> None:
    """debootstrap mounts /proc and /sys inside the new system; never delete through a mount."""
    mounts = [partition.mountpoint for partition in psutil.disk_partitions(all=True)]
    for mount in sorted((m for m in mounts if m.startswith(str(path) + "/")), reverse=True):
        run(["umount", "--lazy", mount], check=False)


# ---- command line (`make image`) ------------------------------------------------------------------

def _main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("info", "build"):
        print(__doc__)
        return 2
    try:
        engine = detect()
        print(f"engine: {engine.describe()}")
        if argv[0] == "build":
            for kind in argv[1:] or ["http"]:
                spec = IMAGES[kind]
                print("$", " ".join(engine.build_command(spec)), flush=True)
                seconds, _ = engine.build(spec)
                size = engine.inspect(spec.tag)["size"]
                print(f"built {spec.tag} in {seconds:.0f} s: {size / 1e6:.0f} MB")
    except (EngineMissing, NeedsNetwork, CommandFailed) as problem:  # said in words, no traceback
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
