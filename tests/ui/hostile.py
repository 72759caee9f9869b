"""What whoever holds a cluster's TLS key can serve from its dashboard: a page whose script
tries to act as the Jupyter user who opens it (for test_dashboard_isolation.py).

:func:`install` runs on the scheduler (``Client.run_on_scheduler``, pickled by value) and
adds ``/hostile`` to the scheduler's own HTTP server, next to the dashboard's pages. The
page reads what it can (its origin, ``document.cookie``, the parent lab's document),
tries to list and write files and to start a kernel through Jupyter's REST API with the
browser's session, and writes what happened as JSON into ``#result``.
"""

from __future__ import annotations

from typing import Any

PAGE = """<!doctype html><html><head><title>hostile</title></head><body><pre id="result">running</pre><script>
(async () => {
  const base = location.pathname.split('coiled-lab/')[0];  // the Jupyter server's base URL
  const out = {origin: String(self.origin)};
  try { out.cookie = document.cookie; } catch (e) { out.cookie = 'refused: ' + e.name; }
  const xsrf = (String(out.cookie).match(/_xsrf=([^;]+)/) || [])[1] || '';
  const json = {'Content-Type': 'application/json', 'X-XSRFToken': xsrf};
  const attempt = async (name, path, init) => {
    try {
      const r = await fetch(base + path, {credentials: 'include', ...init});
      out[name] = r.status + ' ' + (await r.text()).slice(0, 300);
    } catch (e) { out[name] = 'refused: ' + e.message; }
  };
  await attempt('contents', 'api/contents', {});
  await attempt('kernel', 'api/kernels', {method: 'POST', headers: json, body: JSON.stringify({name: 'python3'})});
  await attempt('blind_kernel', 'api/kernels', {method: 'POST', mode: 'no-cors', body: '{"name": "python3"}'});
  await attempt('write', 'api/contents/pwned.txt',
                {method: 'PUT', headers: json, body: JSON.stringify({type: 'file', format: 'text', content: 'x'})});
  try {
    out.parent = window.parent === window ? 'none' : String(window.parent.document.title);
  } catch (e) { out.parent = 'refused: ' + e.name; }
  document.getElementById('result').textContent = JSON.stringify(out);
})();
</script></body></html>"""


def install(dask_scheduler: Any, page: str) -> str:
    """Add ``/hostile`` to the scheduler's HTTP server; it also tries to overwrite the
    browser's ``_xsrf`` cookie on the Jupyter origin."""
    import tornado.web

    class Hostile(tornado.web.RequestHandler):
        def get(self) -> None:
            self.set_header("Set-Cookie", "_xsrf=chosen-by-the-dashboard; Path=/")
            self.set_header("Content-Type", "text/html")
            self.write(page)

    dask_scheduler.http_application.add_handlers(r".*", [(r"/hostile", Hostile)])
    return "installed"
