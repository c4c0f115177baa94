"""Output files: checked before any work, written whole, never one of the inputs."""

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LANDSAT8

from glcgeo.cli import main
from glcgeo.errors import GlcgeoError, NoRoomError
from glcgeo.outputs import HOST, OutputFile, OutputLock, atomic_write, check_destination


def test_existing_output_is_kept_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / 'out.json'
    check_destination(out)
    out.write_text('precious')
    with pytest.raises(GlcgeoError, match=r'output exists \(use --overwrite'):
        check_destination(out)
    check_destination(out, overwrite=True)
    with pytest.raises(GlcgeoError, match='output folder does not exist'):
        check_destination(tmp_path / 'nowhere' / 'out.json')
    with pytest.raises(GlcgeoError, match='output is a folder'):
        check_destination(tmp_path, overwrite=True)


def test_an_input_is_never_an_output_even_with_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / 'scene.tif'
    source.write_bytes(b'input')
    link = tmp_path / 'link.tif'
    link.symlink_to(source)
    monkeypatch.chdir(tmp_path)
    # The same file by its name, another spelling of it, or a link to it.
    for output in (source, 'scene.tif', tmp_path / '.' / 'scene.tif', link):
        with pytest.raises(GlcgeoError, match='output and input must be different'):
            check_destination(output, overwrite=True, inputs=['scene.tif'])
    check_destination(tmp_path / 'map.tif', overwrite=True, inputs=[source])
    assert source.read_bytes() == b'input'


def test_atomic_write_publishes_whole_files_only(tmp_path: Path) -> None:
    out = tmp_path / 'stats.json'
    with atomic_write(out) as temporary:
        assert os.path.dirname(temporary) == str(tmp_path)
        assert not out.exists()  # nothing under the name until complete
        Path(temporary).write_text('complete')
    assert out.read_text() == 'complete'
    assert os.listdir(tmp_path) == ['stats.json']


@pytest.mark.parametrize('error', [RuntimeError, KeyboardInterrupt])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, error: type[BaseException]
) -> None:
    out = tmp_path / 'model.ckpt'
    out.write_text('old')
    with pytest.raises(error), atomic_write(out) as temporary:
        Path(temporary).write_text('half')
        raise error
    assert out.read_text() == 'old'
    assert os.listdir(tmp_path) == ['model.ckpt']


def test_an_uncommitted_output_file_is_removed(tmp_path: Path) -> None:
    with OutputFile(tmp_path / 'map.tif') as output:
        Path(output.temporary).write_text('scratch')
        assert '.partial' in os.path.basename(output.temporary)
    assert os.listdir(tmp_path) == []


def test_stats_never_replaces_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / 'scene.tif'
    source.write_bytes(LANDSAT8.read_bytes())
    args = ['stats', '--data', str(source), '--out', str(source), '--overwrite']
    assert main(args) == 2
    error = capsys.readouterr().err
    assert 'output and input must be different files' in error
    assert error.count('\n') == 1
    assert source.read_bytes() == LANDSAT8.read_bytes()


def test_a_lock_refuses_a_second_run_and_clears_what_dead_ones_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ended = subprocess.run(
        [sys.executable, '-c', 'import os; print(os.getpid())'],
        capture_output=True,
        text=True,
        check=True,
    )
    dead, live = int(ended.stdout), os.getpid()
    lock = tmp_path / '.map.tif.lock'
    lock.write_text(f'{dead} {HOST}\n')  # a killed run's lock and temporary files
    partials = {
        (name, pid): tmp_path / f'.{name}.{HOST}.{pid}.0123abcd.partial'
        for name in ('map.tif', 'other.tif')
        for pid in (dead, live)
    }
    for path in partials.values():
        path.write_bytes(b'part')
    with OutputLock(tmp_path / 'map.tif'):
        assert lock.read_text() == f'{live} {HOST}\n'
        # Only the dead process's temporary files of this output go.
        gone = [key for key, path in partials.items() if not path.exists()]
        assert gone == [('map.tif', dead)]
        owner = re.escape(f'(process {live} on {HOST})')
        message = f'in use by another glcgeo run {owner}'
        with (
            pytest.raises(GlcgeoError, match=message),
            OutputLock(tmp_path / 'map.tif'),
        ):
            pass
        assert lock.exists()
    assert not lock.exists()
    # The other processes of a multi-process run join the first one's claim.
    with OutputLock(tmp_path, folder=True):
        monkeypatch.setenv('LOCAL_RANK', '1')
        with OutputLock(tmp_path, folder=True):
            pass
    assert not (tmp_path / '.glcgeo.lock').exists()
    # A folder's claim clears every output's temporary files of dead processes.
    assert not partials[('other.tif', dead)].exists()
    assert partials[('other.tif', live)].exists()


def test_a_write_without_room_is_one_line_naming_the_output(tmp_path: Path) -> None:
    out = tmp_path / 'stats.json'
    for code, reason, lasting in (
        (errno.ENOSPC, 'no space left on the device', True),
        (errno.EFBIG, 'file size limit reached', False),
    ):
        with pytest.raises(NoRoomError) as raised, atomic_write(out) as temporary:
            Path(temporary).write_text('half')
            raise OSError(code, os.strerror(code))
        assert str(raised.value).startswith(f'{out}: cannot write it: {reason}')
        assert raised.value.lasting is lasting
        assert os.listdir(tmp_path) == []
    # Other errors pass unchanged.
    with pytest.raises(OSError, match='Permission'), atomic_write(out):
        raise OSError(errno.EACCES, 'Permission denied')
