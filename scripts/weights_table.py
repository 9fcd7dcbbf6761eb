""" The README's table of released weights, generated from the release folders' evaluation records
Each folder under hub/releases/ is one Hub repo (`awnet export`): config.json names the architecture and tag, and
awnet_eval.json is the `awnet eval` record its model card quotes (measured on that folder's model.safetensors).
One row per folder: clean accuracy, PGD-20 (`pgd_sat`), AutoAttack and the per-sample worst case of that record,
with the attacks the worst case is over, the sanity checks, N and which test images. Parameters come from
config.json when it holds a count, else from the card's "**Parameters:**" line, else '-'.

    python3 scripts/weights_table.py                     # print the table
    python3 scripts/weights_table.py --check README.md   # exit 1 if the table between the markers differs
    python3 scripts/weights_table.py --write README.md   # replace the table between the markers

The markers are `<!-- weights-table:start -->` and `<!-- weights-table:end -->`.
Standard library only: it runs without the package's environment.
"""
import argparse
import json
import os
import re
import sys

START = '<!-- weights-table:start -->'
END = '<!-- weights-table:end -->'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASES = os.path.join(ROOT, 'hub', 'releases')
RECORD = 'awnet_eval.json'
SHORT = {'fgsm': 'FGSM', 'pgd_sat': 'PGD-20', 'pgd_trades': 'PGD-TRADES', 'cw_inf': 'CW-inf',
         'autoattack': 'AutoAttack', 'square': 'Square'}
HEADER = ('| model (name.tag) | params | clean | PGD-20 | AutoAttack | worst case | worst case over | sanity checks '
          '| N | test images |\n'
          '|---|---:|---:|---:|---:|---:|---|---|---:|---|')


def _load_json(path):
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def _pct(x):
    return '-' if x is None else f'{100 * float(x):.1f}'


def _params(folder, config):
    """Parameter count: config.json's if it has one, else the model card's "**Parameters:**" line, else '-'."""
    for key in ('num_params', 'params', 'parameters'):
        if isinstance(config.get(key), (int, float)):
            return f'{config[key] / 1e6:.2f}M'
    card = os.path.join(folder, 'README.md')
    if os.path.isfile(card):
        with open(card, encoding='utf-8') as f:
            m = re.search(r'\*\*Parameters:\*\*\s*([0-9][0-9.,]*\s*M)', f.read())
        if m:
            return m.group(1).replace(' ', '')
    return '-'


def _robust(record, name):
    for attack in record.get('attacks') or []:
        if attack.get('name') == name:
            return attack.get('robust_acc')
    return None


def _worst_over(record):
    """The attacks of the worst case: the non-router ones by name, the router ones counted."""
    names = (record.get('worst_case') or {}).get('attacks') or []
    kinds = {a.get('name'): a.get('kind') for a in record.get('attacks') or []}
    plain = [SHORT.get(n, n) for n in names if kinds.get(n) != 'router']
    router = [n for n in names if kinds.get(n) == 'router']
    text = ', '.join(plain)
    if router:
        text += f' + {len(router)} router attacks'
    return text or '-'


def _sanity(record):
    checks = record.get('sanity') or []
    passed = record.get('sanity_passed')
    if passed is None or not checks:
        return 'not run'
    failed = sum(1 for c in checks if not c.get('passed'))
    return f'{len(checks)} passed' if passed else f'{failed} of {len(checks)} failed'


def rows(releases=RELEASES):
    """One (name, cells) per release folder holding an evaluation record, in name order."""
    out = []
    for entry in sorted(os.listdir(releases)):
        folder = os.path.join(releases, entry)
        record_path = os.path.join(folder, RECORD)
        if not os.path.isfile(record_path):
            continue
        config_path = os.path.join(folder, 'config.json')
        config = _load_json(config_path) if os.path.isfile(config_path) else {}
        arch = config.get('architecture')
        tag = (config.get('pretrained_cfg') or {}).get('tag')
        name = f'{arch}.{tag}' if arch and tag else entry
        record = _load_json(record_path)
        data = record.get('data') or {}
        wc = record.get('worst_case') or {}
        card = f'hub/releases/{entry}/README.md'
        out.append([
            f'[`{name}`]({card})', _params(folder, config), _pct(record.get('clean_acc')),
            _pct(_robust(record, 'pgd_sat')), _pct(_robust(record, 'autoattack')), _pct(wc.get('robust_acc')),
            _worst_over(record), _sanity(record), str(data.get('n', '-')), data.get('description', '-'),
        ])
    return out


def table(releases=RELEASES):
    return '\n'.join([HEADER] + ['| ' + ' | '.join(r) + ' |' for r in rows(releases)])


def _split(text, path):
    """(before, current table, after) around the markers, or exit 1 naming what is missing."""
    i, j = text.find(START), text.find(END)
    if i < 0 or j < 0 or j < i:
        sys.exit(f'{path}: no {START} ... {END} block')
    return text[:i + len(START)], text[i + len(START):j], text[j:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--check', metavar='FILE', help='exit 1 if the table between the markers in FILE differs')
    group.add_argument('--write', metavar='FILE', help='replace the table between the markers in FILE')
    parser.add_argument('--releases', default=RELEASES, help='folder of release folders (default: hub/releases)')
    args = parser.parse_args(argv)
    generated = table(args.releases)
    if not (args.check or args.write):
        print(generated)
        return 0
    path = args.check or args.write
    with open(path, encoding='utf-8') as f:
        text = f.read()
    before, current, after = _split(text, path)
    if args.check:
        if current.strip() != generated.strip():
            print(f'{path}: the weights table differs from the release records; '
                  f'run `python3 scripts/weights_table.py --write {path}`', file=sys.stderr)
            return 1
        print(f'{path}: the weights table matches the release records')
        return 0
    with open(path, 'w', encoding='utf-8') as f:
        f.write(before + '\n' + generated + '\n' + after)
    print(f'{path}: weights table written ({len(rows(args.releases))} rows)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
