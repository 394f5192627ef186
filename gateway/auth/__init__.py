"""Private channels: which channels need authorization (`policy`), signed tokens (`keys`,
`tokens`), the application's callback (`callback`), the one question endpoints ask
(`authorizer`) and what clients see of it (`answers`).

Nothing is imported here: the settings check imports `policy` and `keys` alone, before the
server patches sockets for gevent, and those pull in neither PyJWT nor urllib3 (and `ssl`).
"""
