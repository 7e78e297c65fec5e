"""The documentation stays true to the repository: every relative link and image of the tracked
Markdown files resolves (anchors too, as GitHub slugs), no text points outside the repository or
at documents that no longer exist, repository paths named in the README and docs/ exist, the
README stays one short page, and its install command is the one CI runs."""
import os
import os.path as osp
import re
import subprocess
import sys
from typing import Dict, Iterator, List, Set, Tuple

import pytest
from conftest import ROOT


README = osp.join(ROOT, 'README.md')
CI_SCRIPT = osp.join(ROOT, '.ci', 'run')
README_MAX_LINES = 260

# where the checked Markdown lives (repository root itself: its *.md files only)
DOC_DIRS = ('docs', 'datasets', osp.join('experiments', 'pretrained_models'), osp.join('tests', 'data'))
SKIP_PARTS = {'.venv', '.venv-ci', 'venv', '.git', 'node_modules', 'results', 'experiments_tmp'}
FORBIDDEN = ('../shared', 'shared/docs', 'shared/metrics_ref', 'shared/data', 'docs/readme/')

FENCE = re.compile(r'^\s*(```|~~~)')
INLINE_CODE = re.compile(r'(`+)(.+?)\1')
LINK = re.compile(r'(!?)\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^()\s>]+)>?(?:\s+"[^"]*")?\s*\)')
HTML_SRC = re.compile(r'<(?:img|a)\b[^>]*?\b(?:src|href)\s*=\s*"([^"]+)"', re.IGNORECASE)
HTML_ANCHOR = re.compile(r'<a\b[^>]*?\b(?:name|id)\s*=\s*"([^"]+)"', re.IGNORECASE)
HEADING = re.compile(r'^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$')
# repository paths named in inline code: `scripts/x.py`, `fusion/archs/`, `docs/x.md`, ...
REPO_PATH = re.compile(r'(?<![\w./-])((?:fusion|scripts|options|docs|tests|experiments/pretrained_models)'
                       r'/[\w./-]*)')
# commands in code blocks: python scripts/x.py, python fusion/train.py, -opt options/x.yml
COMMAND_PATH = re.compile(r'(?:\bpython\s+|-opt\s+)((?:fusion|scripts|options)/[\w./-]+\.(?:py|yml))')


def _is_skipped(rel: str) -> bool:
    return any(part in SKIP_PARTS for part in rel.replace('\\', '/').split('/'))


def markdown_files() -> List[str]:
    """Tracked (and new, not ignored) Markdown files of the root and the documentation folders."""
    try:
        out = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', '--', '*.md'],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
        candidates = [line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the folders
        candidates = [f for f in os.listdir(ROOT) if f.endswith('.md')]
        for top in DOC_DIRS:
            for dirpath, _, files in os.walk(osp.join(ROOT, top)):
                candidates += [osp.relpath(osp.join(dirpath, f), ROOT) for f in files if f.endswith('.md')]
    chosen = set()
    for rel in candidates:
        rel = rel.replace('\\', '/')
        if _is_skipped(rel) or not osp.isfile(osp.join(ROOT, rel)):
            continue
        if '/' not in rel or any(rel.startswith(top.replace(os.sep, '/') + '/') for top in DOC_DIRS):
            chosen.add(rel)
    return sorted(chosen)


MD_FILES = markdown_files()
MAIN_DOCS = [f for f in MD_FILES if f == 'README.md' or f.startswith('docs/')]


def read(rel: str) -> str:
    with open(osp.join(ROOT, rel), encoding='utf-8') as f:
        return f.read()


def _fenced_or_not(text: str, inside: bool) -> Iterator[Tuple[int, str]]:
    """(line number, line) inside fenced code blocks (``inside``) or outside them."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced == inside:
            yield number, line


def prose_lines(text: str) -> Iterator[Tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    return _fenced_or_not(text, inside=False)


def code_block_lines(text: str) -> Iterator[Tuple[int, str]]:
    """(line number, line) inside fenced code blocks."""
    return _fenced_or_not(text, inside=True)


def github_slug(heading: str) -> str:
    """GitHub's heading anchor: the rendered text, lower case, without punctuation other than '-'
    and '_', spaces as '-'."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # links and images: their text
    text = re.sub(r'<[^>]+>', '', text)  # inline HTML tags
    text = text.lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


_ANCHORS: Dict[str, Set[str]] = {}


def anchors(rel: str) -> Set[str]:
    """The anchors of a Markdown file: heading slugs (duplicates numbered) and HTML name/id."""
    cache = _ANCHORS
    if rel not in cache:
        found: Set[str] = set()
        counts: Dict[str, int] = {}
        text = read(rel)
        for _, line in prose_lines(text):
            m = HEADING.match(line)
            if m:
                slug = github_slug(m.group(2))
                n = counts.get(slug, 0)
                counts[slug] = n + 1
                found.add(slug if n == 0 else f'{slug}-{n}')
            found.update(HTML_ANCHOR.findall(line))
        cache[rel] = found
    return cache[rel]


def links(rel: str) -> Iterator[Tuple[int, str, str]]:
    """(line, kind, target) of every Markdown link, image and HTML src/href outside code."""
    for number, line in prose_lines(read(rel)):
        line = INLINE_CODE.sub('', line)
        for bang, _, target in LINK.findall(line):
            yield number, 'image' if bang else 'link', target
        for target in HTML_SRC.findall(line):
            yield number, 'html', target


def check_target(rel: str, target: str) -> str:
    """'' when the relative target resolves (file, folder, anchor), else what is wrong."""
    if re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*:', target):  # http:, https:, mailto:, ...
        return ''
    path, _, anchor = target.partition('#')
    if path:
        if path.startswith('/'):
            return 'absolute path (use a path relative to the file)'
        resolved = osp.normpath(osp.join(ROOT, osp.dirname(rel), path))
        if osp.relpath(resolved, ROOT).startswith(osp.pardir):
            return 'points outside the repository'
        if not osp.exists(resolved):
            return 'no such file or folder'
        target_rel = osp.relpath(resolved, ROOT).replace(os.sep, '/')
    else:
        target_rel = rel
    if anchor and target_rel.endswith('.md') and osp.isfile(osp.join(ROOT, target_rel)):
        if anchor.lower() not in anchors(target_rel):
            return f'no heading with anchor #{anchor} in {target_rel}'
    return ''


def test_markdown_files_found():
    assert 'README.md' in MD_FILES
    assert any(f.startswith('docs/') for f in MD_FILES), MD_FILES
    assert 'datasets/README.md' in MD_FILES


def test_relative_links_and_images_resolve():
    bad = []
    for rel in MD_FILES:
        for number, kind, target in links(rel):
            problem = check_target(rel, target)
            if problem:
                bad.append(f'{rel}:{number}: {kind} ({target}): {problem}')
    assert not bad, 'broken links in the documentation:\n' + '\n'.join(bad)


def test_no_paths_outside_the_repository_or_to_removed_docs():
    bad = []
    for rel in MD_FILES:
        for number, line in enumerate(read(rel).splitlines(), 1):
            for needle in FORBIDDEN:
                if needle in line:
                    bad.append(f'{rel}:{number}: mentions {needle!r}: {line.strip()[:120]}')
    assert not bad, ('the documentation must not point outside the repository (describe the project\'s '
                     'reference notes in words) nor at docs/readme/:\n' + '\n'.join(bad))


def _tracked_text_files() -> List[str]:
    try:
        out = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip('not a git checkout')
    this = osp.relpath(osp.abspath(__file__), ROOT).replace(os.sep, '/')
    return [f for f in out.splitlines()
            if f.endswith(('.py', '.yml', '.yaml', '.md', '.cfg', '.txt')) and not _is_skipped(f) and f != this
            and osp.isfile(osp.join(ROOT, f))]


def test_no_references_to_removed_readme_folder():
    """The README's sections once lived in docs/readme/*.md; code and options point at docs/ now."""
    bad = []
    for rel in _tracked_text_files():
        for number, line in enumerate(read(rel).splitlines(), 1):
            if 'docs/readme' in line:
                bad.append(f'{rel}:{number}: {line.strip()[:120]}')
    assert not bad, 'references to docs/readme/ (moved to docs/*.md):\n' + '\n'.join(bad)


def test_repository_paths_named_in_readme_and_docs_exist():
    bad = []
    for rel in MAIN_DOCS:
        text = read(rel)
        for number, line in prose_lines(text):
            for span in INLINE_CODE.finditer(line):
                code = span.group(2)
                for m in REPO_PATH.finditer(code):
                    path = m.group(1).rstrip('.')
                    after = code[m.end():m.end() + 1]
                    if after in ('<', '{', '*', '['):  # a pattern such as docs/<name>.md
                        continue
                    if not osp.exists(osp.join(ROOT, path)):
                        bad.append(f'{rel}:{number}: `{path}` does not exist')
        for number, line in code_block_lines(text):
            for path in COMMAND_PATH.findall(line):
                if not osp.exists(osp.join(ROOT, path)):
                    bad.append(f'{rel}:{number}: command uses {path}, which does not exist')
    assert not bad, 'the README/docs name files that are not in the repository:\n' + '\n'.join(bad)


def test_readme_is_one_short_page():
    with open(README, encoding='utf-8') as f:
        n = len(f.read().splitlines())
    assert n <= README_MAX_LINES, (f'README.md has {n} lines (at most {README_MAX_LINES}): move the '
                                   'details to docs/ and link them')


def _ci_commands() -> List[str]:
    with open(CI_SCRIPT, encoding='utf-8') as f:
        return [line.strip() for line in f if line.strip() and not line.strip().startswith('#')]


def test_readme_install_command_is_the_one_ci_runs():
    installs = [line for line in _ci_commands() if line.startswith('pip install')]
    assert installs, f'no "pip install" line in {CI_SCRIPT}'
    install = installs[0]
    for rel in ('README.md', 'docs/installation.md'):
        lines = [line.strip() for line in read(rel).splitlines()]
        assert install in lines, (f'{rel} must show the install command CI runs ({CI_SCRIPT}), verbatim '
                                  f'on one line:\n  {install}')


def test_readme_test_command_is_the_one_ci_runs():
    tests = [line for line in _ci_commands() if line.startswith('python -m pytest')]
    assert tests, f'no "python -m pytest" line in {CI_SCRIPT}'
    readme = read('README.md')
    for command in tests:
        assert command in readme, f'README.md must show the test command CI runs: {command}'


@pytest.mark.parametrize('heading, slug', [
    ('## The dataset: `SAGEFusionDataset`', 'the-dataset-sagefusiondataset'),
    ('### Teacher speed: fused (SDPA) vs plain attention', 'teacher-speed-fused-sdpa-vs-plain-attention'),
    ('## Options of the recipe (`options/train_sage.yml`, section `train:`)',
     'options-of-the-recipe-optionstrain_sageyml-section-train'),
    ('# basicsr fixes', 'basicsr-fixes'),
])
def test_github_slug(heading, slug):
    m = HEADING.match(heading)
    assert m and github_slug(m.group(2)) == slug


def test_checker_reports_broken_links(tmp_path, monkeypatch):
    """The link checker can fail: a missing file and a missing anchor are reported."""
    docs = tmp_path / 'docs'
    docs.mkdir()
    (docs / 'a.md').write_text('# Title\n\n[ok](b.md#real-heading) [gone](missing.md) [bad](b.md#nope)\n'
                               '![img](figures/none.png) `[code](not-a-link.md)`\n', encoding='utf-8')
    (docs / 'b.md').write_text('# Real heading\n', encoding='utf-8')
    module = sys.modules[__name__]
    monkeypatch.setattr(module, 'ROOT', str(tmp_path))
    monkeypatch.setattr(module, '_ANCHORS', {})
    found = {target: check_target('docs/a.md', target) for _, _, target in links('docs/a.md')}
    assert 'not-a-link.md' not in found  # inline code is not a link
    assert found['b.md#real-heading'] == ''
    assert found['missing.md'] == 'no such file or folder'
    assert 'no heading' in found['b.md#nope']
    assert found['figures/none.png'] == 'no such file or folder'
