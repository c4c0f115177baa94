"""The ``glcgeo`` command line as a whole: help that answers at once."""

import json
import subprocess
import sys

from glcgeo.cli import COMMANDS

#: Prints the heavy modules that ``glcgeo --help`` and each command's help import.
HELP_IMPORTS = """
import json, sys
from glcgeo.cli import main
for command in ([], *([name] for name in sys.argv[1:])):
    try:
        main([*command, '--help'])
    except SystemExit:
        pass
heavy = ('torch', 'torchgeo', 'lightning', 'rasterio', 'segmentation_models_pytorch')
print(json.dumps(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)
"""


def test_help_imports_neither_torch_nor_torchgeo() -> None:
    result = subprocess.run(
        [sys.executable, '-c', HELP_IMPORTS, *COMMANDS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for command in ('stats', 'pretrain', 'export', 'finetune', 'predict'):
        assert f'usage: glcgeo {command}' in result.stdout
    assert json.loads(result.stderr.splitlines()[-1]) == []
