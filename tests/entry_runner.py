"""Runs entry points in-process, one after another, as the entry-point tests need them:
``python tests/entry_runner.py CASES.json [WORLD]``.

Each case (``{'id', 'script', 'args'}``) runs with ``runpy`` as ``python <script> <args>`` would
(its folder on ``sys.path``), stdout/stderr captured; a traceback that escapes is printed into its
stderr. With ``WORLD`` (a folder), the files and folders below it are hashed before and after each
case and the changed paths recorded. Prints ``@@RESULTS@@`` and a JSON list of ``{'id', 'code',
'stderr', 'stdout', 'changed', 'seconds'}`` last. One process for many cases: the imports of torch
and the package are paid once.
"""
import contextlib
import hashlib
import io
import json
import os
import runpy
import sys
import time
import traceback


MARK = '@@RESULTS@@'


def digest(world):
    out = {}
    if not world:
        return out
    for base, dirs, files in os.walk(world):
        for d in dirs:
            out[os.path.relpath(os.path.join(base, d), world) + '/'] = ''
        for name in files:
            path = os.path.join(base, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, world)] = hashlib.sha256(f.read()).hexdigest()
    return out


def run_case(case):
    sys.argv = [case['script']] + case['args']
    folder = os.path.dirname(case['script'])
    if folder not in sys.path:
        sys.path.insert(0, folder)
    err, out = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            runpy.run_path(case['script'], run_name='__main__')
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
    return code, err.getvalue(), out.getvalue()


def main(cases_path, world=None):
    with open(cases_path) as f:
        cases = json.load(f)
    before = digest(world)
    results = []
    for case in cases:
        start = time.time()
        code, stderr, stdout = run_case(case)
        after = digest(world)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        before = after
        results.append({'id': case['id'], 'code': code, 'stderr': stderr, 'stdout': stdout, 'changed': changed,
                        'seconds': time.time() - start})
    print(MARK + json.dumps(results))


def parse_results(output):
    """The result list a run printed (``None`` when it printed none: it crashed)."""
    return json.loads(output.split(MARK)[-1]) if MARK in output else None


if __name__ == '__main__':
    main(*sys.argv[1:3])
