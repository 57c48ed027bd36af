"""[smpp] in the config file: off by default, errors that name the key."""

from __future__ import annotations

import pytest

from gatewayd import config


def test_off_by_default_so_the_embedded_default_needs_no_smsc():
    cfg = config.load(None)
    assert cfg.smpp.enabled is False and cfg.smpp.bind_mode == "transceiver"


@pytest.mark.parametrize("text, expected", [
    ('enabled = true\n', ":2: smpp.enabled: needs smpp.system_id"),
    ('password = "much-too-long"\n', "smpp.password: must be at most 8 ASCII characters"),
    ('system_id = "a b"\n', "smpp.system_id: must be at most 15 ASCII characters"),
    ('bind_mode = "receiver"\n', "smpp.bind_mode: must be one of transceiver, pair"),
    ('ussd_profile = "huawei"\n', "smpp.ussd_profile: must be one of standard, sixdee"),
    ('long_sms = "sar"\n', "smpp.long_sms: must be one of udh, message_payload"),
    ('receipt_id_format = "base64"\n', "smpp.receipt_id_format: must be one of auto"),
    ('window = 0\n', "smpp.window: must be between 1 and 1000"),
    ('port = "2775"\n', "smpp.port: must be an integer"),
    ('source_addr = ""\n', "smpp.source_addr: must not be empty"),
])
def test_bad_smpp_values_name_the_key(tmp_path, text, expected):
    path = tmp_path / "g.toml"
    path.write_text("[smpp]\n" + text)
    with pytest.raises(config.ConfigError) as e:
        config.load(str(path))
    assert any(expected in p for p in e.value.problems), e.value.problems


def test_a_working_smpp_section(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('[smpp]\nenabled = true\nhost = "smsc.operator.example"\nsystem_id = "vbox"\n'
                    'password = "s3cret"\nbind_mode = "pair"\nsubmit_rate = 50\n')
    cfg = config.load(str(path))
    assert (cfg.smpp.host, cfg.smpp.bind_mode, cfg.smpp.submit_rate) == (
        "smsc.operator.example", "pair", 50.0)
