"""The router's configuration: TLS-only listeners, and an access control that grants each site only its keys."""
import json
from pathlib import Path

import pytest
import yaml

from tensorguard_gateway.network import NetworkConfigError, RouterConfig, TlsFiles, client_config, load_router_config

TLS = TlsFiles('ca.crt', 'router.crt', 'router.key')


def write(tmp_path: Path, **changes) -> Path:
    data = {'fleet': 'fleet', 'listen': ['tls/127.0.0.1:7447'],
            'tls': {'root_ca_certificate': 'certs/ca.crt', 'certificate': 'certs/router.crt',
                    'private_key': 'certs/router.key'},
            'sites': {'site_a': ['robot_1', 'robot_2'], 'site_b': ['robot_3']}}
    data.update(changes)
    path = tmp_path / 'gateway_network.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_file_loads_with_tls_paths_relative_to_it(tmp_path):
    config = load_router_config(write(tmp_path))
    assert config.tls.certificate == str(tmp_path / 'certs' / 'router.crt')
    assert config.sites == {'site_a': ['robot_1', 'robot_2'], 'site_b': ['robot_3']}


@pytest.mark.parametrize('changes, message', [
    ({'listen': ['tcp/0.0.0.0:7447']}, 'not a tls/'),
    ({'listen': []}, 'no endpoint'),
    ({'sites': {'fleet': ['robot_1']}}, 'reserved'),
    ({'sites': {'site_a': []}}, 'lists no robot'),
    ({'sites': {'site_a': ['robot/*']}}, 'robot id'),
    ({'fleet': 'Fleet'}, 'fleet'),
    ({'extra': 1}, 'exactly the keys'),
    ({'site_aggregation': ['site_c']}, "'site_c' is not one of the sites"),
    ({'site_aggregation': 'site_a'}, 'a list of site ids'),
])
def test_unusable_configurations_are_refused_naming_the_problem(tmp_path, changes, message):
    with pytest.raises(NetworkConfigError, match=message):
        load_router_config(write(tmp_path, **changes))


def test_missing_tls_files_are_named():
    with pytest.raises(NetworkConfigError, match='tls.root_ca_certificate'):
        RouterConfig('fleet', ['tls/127.0.0.1:7447'], TLS).zenoh_settings()


def test_the_access_control_denies_by_default_and_grants_a_site_only_its_keys():
    acl = RouterConfig('fleet', ['tls/127.0.0.1:7447'], TLS, {'site_a': ['robot_1'], 'site_b': ['robot_3']}
                       ).access_control()
    assert acl['enabled'] and acl['default_permission'] == 'deny'
    rules = {rule['id']: rule for rule in acl['rules']}
    assert rules['site_a_publish'] == {
        'id': 'site_a_publish', 'messages': ['put'], 'flows': ['ingress'], 'permission': 'allow',
        'key_exprs': ['tensorguard/fleet/site_a/robot_1/encrypted_updates',
                      'tensorguard/fleet/site_a/robot_1/outcome_reports', 'tensorguard/fleet/site_a/robot_1/status']}
    granted_to_a = [key for rule_id, rule in rules.items() if rule_id.startswith('site_a_')
                    for key in rule['key_exprs']]
    assert not [key for key in granted_to_a if 'site_b' in key or 'robot_3' in key]
    subjects = {s['id']: s['cert_common_names'] for s in acl['subjects']}
    assert subjects == {'fleet_server': ['fleet-server'], 'site_a': ['site:site_a'], 'site_b': ['site:site_b']}
    assert {p['id']: p['subjects'] for p in acl['policies']} == {
        'fleet_server': ['fleet_server'], 'site_a': ['site_a'], 'site_b': ['site_b']}


def test_only_a_site_listed_for_site_aggregation_may_put_a_site_sum_and_only_its_own(tmp_path):
    config = load_router_config(write(tmp_path, site_aggregation=['site_a']))
    assert config.site_aggregation == ['site_a']
    rules = {rule['id']: rule for rule in config.access_control()['rules']}
    puts = {site: [key for key in rules[f'{site}_publish']['key_exprs'] if key.endswith('/site_sum')]
            for site in ('site_a', 'site_b')}
    assert puts == {'site_a': ['tensorguard/fleet/site_a/site_sum'], 'site_b': []}
    assert 'tensorguard/fleet/*/site_sum' in rules['site_a_match']['key_exprs']
    assert not [key for key in rules['site_b_match']['key_exprs'] if key.endswith('/site_sum')]
    assert load_router_config(write(tmp_path)).site_aggregation == []


def test_router_and_gateways_announce_a_lease_no_shorter_than_a_blocked_puts_wait(tmp_path):
    """A link closed by its lease while a put blocks on it stays closing until that put's wait ends
    (docs/gateway.md, a cut during a round): the lease must cover the wait, on both ends of a link."""
    for name in ('ca.crt', 'cert.crt', 'cert.key'):
        (tmp_path / name).write_text('PEM')
    tls = TlsFiles(*(str(tmp_path / name) for name in ('ca.crt', 'cert.crt', 'cert.key')))
    configs = [RouterConfig('fleet', ['tls/127.0.0.1:7447'], tls).zenoh_config(),
               client_config(['tls/localhost:7447'], tls)]
    for config in configs:
        tx = json.loads(config.get_json('transport/link/tx'))
        assert tx['lease'] * 1000 >= tx['queue']['congestion_control']['block']['wait_before_close'] >= 60_000_000
        assert tx['lease'] / tx['keep_alive'] <= 2500  # keep-alives as often as with Zenoh's default lease
