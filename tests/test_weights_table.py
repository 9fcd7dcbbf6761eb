"""The README's weights table is the one scripts/weights_table.py generates from the release records."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'scripts', 'weights_table.py')
START, END = '<!-- weights-table:start -->', '<!-- weights-table:end -->'


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=ROOT)


def test_readme_weights_table_matches_the_release_records():
    result = run('--check', os.path.join(ROOT, 'README.md'))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_changed_cell_is_detected_and_write_restores_it(tmp_path):
    readme = tmp_path / 'README.md'
    shutil.copy(os.path.join(ROOT, 'README.md'), readme)
    text = readme.read_text()
    i, j = text.index(START), text.index(END)
    row = next(line for line in text[i:j].splitlines() if line.startswith('| [`'))
    cells = row.split(' | ')
    cells[2] = '99.9' if cells[2] != '99.9' else '11.1'  # the clean accuracy of the first row
    readme.write_text(text[:i] + text[i:j].replace(row, ' | '.join(cells)) + text[j:])

    assert run('--check', str(readme)).returncode == 1
    assert run('--write', str(readme)).returncode == 0
    assert readme.read_text() == text
    assert run('--check', str(readme)).returncode == 0


def test_a_file_without_the_markers_is_refused(tmp_path):
    plain = tmp_path / 'plain.md'
    plain.write_text('# no table here\n')
    assert run('--check', str(plain)).returncode == 1
