"""Named clients of the proxy: who a key belongs to, which models it may use, its limits,
its priority where requests wait, and what it used."""
