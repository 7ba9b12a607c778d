"""README's command reference names every option `--help` shows, in that command's section."""

from __future__ import annotations

import re

import typer

from conftest import ROOT

# Options every command shares, documented once under "Conventions".
SHARED = {"--output", "--quiet", "--json", "--help", "--seed", "--max-reject-rate", "--cache-dir", "--device",
          "--no-cache", "--overwrite"}
SECTION_OF = {"calibrate": "review", "cache": "dedup"}


def _leaves(command, words):
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _leaves(sub, [*words, name])
    else:
        yield words, command


def test_every_option_is_documented_in_its_section():
    from prefcli.cli.main import app

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    sections = {m.group(1): m.group(2)
                for m in re.finditer(r"<!-- section:(\S+) -->(.*?)<!-- /section:\1 -->", readme, re.S)}
    conventions = readme[readme.index("## Conventions"):readme.index("## Schema")]
    missing = []
    for words, command in _leaves(typer.main.get_command(app), []):
        text = sections.get(SECTION_OF.get(words[0], words[0]))
        assert text, f"README has no section for prefcli {' '.join(words)}"
        assert f"{' '.join(words)}" in text, f"README section does not show `prefcli {' '.join(words)}`"
        for param in command.params:
            if getattr(param, "hidden", False) or param.param_type_name != "option":
                continue
            flags = [o for o in [*param.opts, *param.secondary_opts] if o.startswith("--")]
            if any(f in SHARED and f in conventions for f in flags):
                continue
            if not any(f in text for f in flags):
                missing.append(f"prefcli {' '.join(words)} {flags[0]}")
    assert not missing, "undocumented options: " + ", ".join(missing)
