"""A WAN link on this machine for the gateway tests and benchmark (ROS-free; needs root): the router runs in
its own network namespace, reached over a veth pair whose both ends are shaped with the `tbf` qdisc (this
kernel has no `netem`), and the link can be cut (`ip link set down` on the namespace's end) and restored.

Each link takes the first free number (namespace ``tg_wan_<n>``, interfaces ``tgwan<n>a``/``tgwan<n>b``,
subnet ``10.231.<n>.0/24``), so several test runs on one host do not take each other's link.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

NUMBERS = range(1, 255)


def _run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f'{" ".join(command)}: {result.stderr.strip() or result.stdout.strip()}')
    return result.stdout


CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21  # linux/capability.h


def unavailable() -> str:
    """Why a `ShapedLink` cannot be made here ('' if it can): not root, without the capabilities network
    namespaces and links need (a container may drop them), or no ``ip`` or ``tc`` command."""
    if os.geteuid() != 0:
        return 'network namespaces, veth pairs and tbf need root'
    with open('/proc/self/status') as status:
        effective = next((int(line.split()[1], 16) for line in status if line.startswith('CapEff:')), 0)
    lacking = [name for name, bit in (('CAP_NET_ADMIN', CAP_NET_ADMIN), ('CAP_SYS_ADMIN', CAP_SYS_ADMIN))
               if not effective >> bit & 1]
    if lacking:
        return f'root without {" and ".join(lacking)} (network namespaces and links need them)'
    missing = [tool for tool in ('ip', 'tc') if shutil.which(tool) is None]
    return f'no {" or ".join(missing)} command (iproute2)' if missing else ''


@dataclass
class ShapedLink:
    """A namespace holding the peer of a host veth at `remote`; both directions limited to `rate`."""

    rate: str = '10mbit'
    number: int = 0  # chosen on entry: the first not in use

    @property
    def namespace(self) -> str:
        """The router's network namespace."""
        return f'tg_wan_{self.number}'

    @property
    def host_if(self) -> str:
        """The veth end on the host."""
        return f'tgwan{self.number}a'

    @property
    def peer_if(self) -> str:
        """The veth end in the namespace."""
        return f'tgwan{self.number}b'

    @property
    def local(self) -> str:
        """The host's address on the link."""
        return f'10.231.{self.number}.1'

    @property
    def remote(self) -> str:
        """The namespace's address on the link (where the router listens)."""
        return f'10.231.{self.number}.2'

    def __enter__(self) -> ShapedLink:
        in_use = _run('ip', '-o', 'addr') + _run('ip', 'netns', 'list') + _run('ip', '-o', 'link')
        self.number = next((n for n in NUMBERS if f'10.231.{n}.' not in in_use and f'tg_wan_{n}' not in in_use
                            and f'tgwan{n}a' not in in_use), 0)
        if not self.number:
            raise RuntimeError('every tg_wan_<n> link number is in use')
        _run('ip', 'netns', 'add', self.namespace)
        try:
            _run('ip', 'link', 'add', self.host_if, 'type', 'veth', 'peer', 'name', self.peer_if)
            _run('ip', 'link', 'set', self.peer_if, 'netns', self.namespace)
            _run('ip', 'addr', 'add', f'{self.local}/24', 'dev', self.host_if)
            _run('ip', 'link', 'set', self.host_if, 'up')
            self._in_namespace('ip', 'addr', 'add', f'{self.remote}/24', 'dev', self.peer_if)
            self._in_namespace('ip', 'link', 'set', self.peer_if, 'up')
            self._in_namespace('ip', 'link', 'set', 'lo', 'up')
            tbf = ('tbf', 'rate', self.rate, 'burst', '32kbit', 'latency', '400ms')
            _run('tc', 'qdisc', 'add', 'dev', self.host_if, 'root', *tbf)
            self._in_namespace('tc', 'qdisc', 'add', 'dev', self.peer_if, 'root', *tbf)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _in_namespace(self, *command: str) -> None:
        _run('ip', 'netns', 'exec', self.namespace, *command)

    @property
    def prefix(self) -> tuple[str, ...]:
        """The command prefix that runs a process inside the namespace."""
        return ('ip', 'netns', 'exec', self.namespace)

    def cut(self) -> None:
        """Take the namespace's end down: nothing passes until `restore` (the host keeps its route, so
        packets are lost on the link instead of taking the default route)."""
        self._in_namespace('ip', 'link', 'set', self.peer_if, 'down')

    def restore(self) -> None:
        """Bring the namespace's end up again."""
        self._in_namespace('ip', 'link', 'set', self.peer_if, 'up')

    def __exit__(self, *_exc: object) -> None:
        subprocess.run(['ip', 'link', 'del', self.host_if], capture_output=True)
        subprocess.run(['ip', 'netns', 'del', self.namespace], capture_output=True)
