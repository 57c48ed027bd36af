"""Config: the embedded default, the example file, and errors that name the key."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tomllib

import pytest

from gatewayd import config

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "gatewayd.example.toml"


def test_embedded_default_is_local_and_needs_nothing():
    cfg = config.load(None)
    assert cfg.http.listen == "127.0.0.1:8080"
    assert cfg.store.state_dir == "var"
    assert cfg.db_path == "var/gatewayd.db"
    assert cfg.ussd.service_codes == ["*383#"]


def test_example_documents_every_key_and_matches_the_defaults():
    data = tomllib.loads(EXAMPLE.read_text())
    for section, keys in config.SCHEMA.items():
        assert section in data, f"example lacks [{section}]"
        for key, spec in keys.items():
            assert key in data[section], f"example lacks {section}.{key}"
            assert data[section][key] == spec.default, f"{section}.{key} differs from the default"
    assert config.load(str(EXAMPLE)).values == config.defaults()
    # [[modems]] is an array of tables: none by default, so the example's is commented out.
    assert "modems" not in data and config.load(str(EXAMPLE)).modems == []


def test_example_modem_table_documents_every_key_and_parses_uncommented(tmp_path):
    from dataclasses import fields

    from modem.config import ModemConfig
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("# [[modems]]")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("# "))
    table = [ln[2:] for ln in lines[start:end]]
    keys = {ln.split("=")[0].strip() for ln in table[1:]}
    assert keys == {f.name for f in fields(ModemConfig)}
    [m] = config.load(_write(tmp_path, "\n".join(table) + "\n")).modems
    assert (m.port, m.name, m.baud, m.pin) == ("/dev/gsmmodem-ABC123", "gsmmodem-ABC123",
                                               115200, "1234")


@pytest.mark.parametrize("text, expected", [
    ('[[modems]]\nport = "/dev/a"\n[[modems]]\nport = "/dev/b"\nbaud = 3\n',
     ":5: modems[1].baud: one of"),
    ('[site]\nid = "a"\n[[modems]]\nbaud = 9600\n', ":3: modems[0].port: required"),
    ('[[modems]]\nport = "/dev/a"\nspeed = 1\n', ":3: modems[0].speed: unknown key"),
    ('[[modems]]\nport = "/dev/a"\n[[modems]]\nport = "/dev/a"\nname = "b"\n',
     ":4: modems[1].port: /dev/a is the same device as modems[0]"),
    ("modems = 3\n", "modems: must be [[modems]] tables"),
])
def test_bad_modem_tables_name_the_key_and_line(tmp_path, text, expected):
    with pytest.raises(config.ConfigError) as e:
        config.load(_write(tmp_path, text))
    assert any(expected in p for p in e.value.problems), e.value.problems


def test_a_bad_sim_pin_is_never_echoed(tmp_path):
    with pytest.raises(config.ConfigError) as e:
        config.load(_write(tmp_path, '[[modems]]\nport = "/dev/a"\npin = "98x7"\n'))
    assert ":3: modems[0].pin" in e.value.problems[0] and "98x7" not in str(e.value)


def _write(tmp_path, text):
    p = tmp_path / "g.toml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text, expected", [
    ("[http]\nlisten = \"127.0.0.1:8080\"\nlisen = 1\n", ":3: http.lisen: unknown key"),
    ("[htp]\nlisten = 1\n", ":1: htp: unknown section"),
    ("[http]\n\nmax_body_bytes = \"big\"\n", ":3: http.max_body_bytes: must be an integer"),
    ("[http]\nlisten = \"8080\"\n", ":2: http.listen: must be HOST:PORT"),
    ("[http]\nlisten = \"example.com:80\"\n", "http.listen: host must be an IP address"),
    ("[ussd]\nservice_codes = [\"383\"]\n", "ussd.service_codes: must be a non-empty list"),
    ("[store]\nsynchronous = \"normal\"\n", "store.synchronous: must be one of full, extra"),
    ("[security]\npin_attempts = 0\n", "security.pin_attempts: must be between 1 and 10"),
    ("[security]\npin_attempts = true\n", "security.pin_attempts: must be an integer"),
    ("[lending]\nmin_amount = 500\nmax_amount = 100\n", "lending.min_amount: must not exceed"),
    ("[site]\nid = \"Site One\"\n", "site.id: must be 1-32 characters"),
    ("[http\nlisten=1", "not valid TOML"),
])
def test_bad_values_name_the_key_and_line(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(config.ConfigError) as e:
        config.load(path)
    assert any(expected in p for p in e.value.problems), e.value.problems


def test_every_problem_is_reported_at_once(tmp_path):
    path = _write(tmp_path, "[http]\nlisten = 1\n[log]\nlevel = \"loud\"\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(path)
    assert len(e.value.problems) == 2


def test_integer_accepted_where_a_number_is_expected(tmp_path):
    cfg = config.load(_write(tmp_path, "[ussd]\nsession_idle_seconds = 120\n"))
    assert cfg.ussd.session_idle_seconds == 120.0


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(str(tmp_path / "nope.toml"))


def _gatewayd(*args):
    return subprocess.run([sys.executable, "-m", "gatewayd", *args], capture_output=True,
                          text=True, timeout=60)


def test_check_config_command(tmp_path):
    ok = _gatewayd("check-config", str(EXAMPLE))
    assert ok.returncode == 0 and "ok" in ok.stdout
    bad = _gatewayd("check-config", _write(tmp_path, "[http]\nlisen = 1\n"))
    assert bad.returncode == 2
    assert "http.lisen: unknown key" in bad.stderr


def test_run_refuses_a_bad_config_before_touching_anything(tmp_path):
    path = _write(tmp_path, f"[store]\nstate_dir = \"{tmp_path / 'state'}\"\n[http]\nlisten = 5\n")
    r = _gatewayd("run", "--config", path)
    assert r.returncode == 2
    assert "http.listen" in r.stderr
    assert not (tmp_path / "state").exists()


def test_service_name_must_stay_gsm7(tmp_path):
    with pytest.raises(config.ConfigError, match="lending.service_name: must use only GSM"):
        config.load(_write(tmp_path, '[lending]\nservice_name = "Mkopo ✓"\n'))


DIRECT = ('[sync]\nenabled = true\n[mpesa]\nmode = "direct"\n'
          'daraja_url = "https://sandbox.safaricom.co.ke"\nshortcode = "174379"\n'
          'initiator_name = "gatewaydapi"\ncallback_base_url = "https://up.example.org"\n')


def test_mpesa_defaults_to_the_upstream_and_direct_mode_validates(tmp_path):
    assert config.load(None).mpesa.mode == "upstream"
    cfg = config.load(_write(tmp_path, DIRECT))
    assert (cfg.mpesa.mode, cfg.mpesa.b2c_shortcode) == ("direct", "")
    assert cfg.mpesa_credentials_path == "var/daraja.toml"


@pytest.mark.parametrize("drop, expected", [
    ('daraja_url = "https://sandbox.safaricom.co.ke"\n', "mpesa.daraja_url: needed when"),
    ('shortcode = "174379"\n', "mpesa.shortcode: needed when"),
    ('initiator_name = "gatewaydapi"\n', "mpesa.initiator_name: needed when"),
    ('callback_base_url = "https://up.example.org"\n', "mpesa.callback_base_url: needed when"),
    ("[sync]\nenabled = true\n", ':2: mpesa.mode: "direct" needs sync.enabled = true'),
])
def test_direct_mode_names_each_key_it_lacks(tmp_path, drop, expected):
    with pytest.raises(config.ConfigError) as e:
        config.load(_write(tmp_path, DIRECT.replace(drop, "")))
    assert any(expected in p for p in e.value.problems), e.value.problems


@pytest.mark.parametrize("text, expected", [
    ('[mpesa]\nmode = "both"\n', ":2: mpesa.mode: must be one of upstream, direct"),
    ('[mpesa]\nshortcode = "17a379"\n', "mpesa.shortcode: must be 5-7 digits"),
    ('[mpesa]\ndaraja_url = "sandbox"\n', "mpesa.daraja_url: must be an http"),
    ('[mpesa]\ntransaction_type = "Pay"\n', "mpesa.transaction_type: must be one of"),
    ('[mpesa]\nconsumer_secret = "s3cret"\n', "mpesa.consumer_secret: unknown key"),
])
def test_bad_mpesa_values_name_the_key(tmp_path, text, expected):
    with pytest.raises(config.ConfigError) as e:
        config.load(_write(tmp_path, text))
    assert any(expected in p for p in e.value.problems), e.value.problems
