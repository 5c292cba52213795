"""A WAN link on this machine for the gateway benchmark (ROS-free; needs root): the router runs in its
own network namespace, reached over a veth pair whose both ends are shaped with the `tbf` qdisc (this
kernel has no `netem`), and the link can be cut (`ip link set down` on the namespace's end) and restored.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f'{" ".join(command)}: {result.stderr.strip() or result.stdout.strip()}')


@dataclass
class ShapedLink:
    """Namespace `namespace` holding ``<host_if>``'s peer at `remote`; both directions limited to `rate`."""

    namespace: str = 'tg_gateway_wan'
    host_if: str = 'tgwan0'
    peer_if: str = 'tgwan1'
    local: str = '10.231.0.1'
    remote: str = '10.231.0.2'
    rate: str = '10mbit'

    def __enter__(self) -> ShapedLink:
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
