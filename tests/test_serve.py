"The loopback server: many hosts, clean shutdown under load, hostile routes."
import http.client, threading, time, urllib.error, urllib.request
from concurrent.futures import ThreadPoolExecutor
import pytest
from fastpipes.serve import LoopbackProxy, LoopbackServer, Route

def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r: return r.status, r.read()

def test_many_hosts_one_port():
    with LoopbackServer({'/x': b'abc'}, hosts=20) as srv:
        assert len({u.rsplit(':', 1)[1] for u in srv.urls}) == 1
        assert [get(srv.url('/x', h))[1] for h in range(20)] == [b'abc'] * 20
        assert len(srv.max_conns) == 20

def test_port_per_host():
    with LoopbackServer({'/x': b'abc'}, hosts=3, same_port=False) as srv:
        assert all(get(u + 'x')[1] == b'abc' for u in srv.urls)

def test_shutdown_joins_threads_under_load():
    before = set(threading.enumerate())
    srv = LoopbackServer({'/slow': Route(b'x' * 100, chunk=10, chunk_delay=0.5), '/hang': Route(hang=True),
                          '/big': Route(b'', endless=True)}, hosts=2).start()
    conns = []
    for path in ['/slow', '/hang', '/big'] * 3:
        c = http.client.HTTPConnection(srv.ip(len(conns) % 2), srv.servers[0].server_address[1], timeout=5)
        c.request('GET', path); conns.append(c)
    time.sleep(0.2)
    t0 = time.monotonic(); srv.close()
    assert time.monotonic() - t0 < 5
    assert not [t for t in threading.enumerate() if t not in before and 'Thread-' in t.name], threading.enumerate()
    for c in conns: c.close()

def test_delay_is_concurrent():
    with LoopbackServer(lambda p: Route(b'ok', delay=0.3), hosts=4) as srv:
        t0 = time.monotonic()
        with ThreadPoolExecutor(16) as ex: res = list(ex.map(lambda i: get(srv.url(f'/{i}', i % 4)), range(16)))
        assert res == [(200, b'ok')] * 16 and time.monotonic() - t0 < 3   # 16 × 0.3 s would be 4.8 s in series
        assert srv.n_requests == 16

def test_headers_status_and_length():
    with LoopbackServer({'/h': Route(b'{}', 201, 'application/json', headers={'X-Test': '1'}),
                         '/liar': Route(b'abc', length=10)}) as srv:
        with urllib.request.urlopen(srv.url('/h'), timeout=5) as r:
            assert (r.status, r.headers['Content-Type'], r.headers['X-Test'], r.read()) == (201, 'application/json', '1', b'{}')
        with pytest.raises(http.client.IncompleteRead): get(srv.url('/liar'))

def test_bad_route_type():
    with LoopbackServer({'/x': 'text'}) as srv:
        with pytest.raises(TypeError): srv.route('/x')

def test_bad_hosts():
    with pytest.raises(ValueError): LoopbackServer(hosts=300)

def test_raw_and_reason():
    "`raw` sends bytes that are no HTTP answer; `reason` replaces the status text."
    import socket
    with LoopbackServer({'/raw': Route(raw=b'garbage\r\n'), '/why': Route(b'x', 403, reason='Go away')}) as srv:
        with socket.create_connection((srv.ip(), srv.servers[0].server_address[1]), timeout=5) as s:
            s.sendall(b'GET /raw HTTP/1.1\r\nHost: x\r\n\r\n')
            data = b''
            while chunk := s.recv(100): data += chunk
        assert data == b'garbage\r\n'                     # and then the server closed the connection
        with pytest.raises(urllib.error.HTTPError) as e: get(srv.url('/why'))
        assert e.value.code == 403 and e.value.reason == 'Go away'

def test_proxy_forwards_and_tunnels():
    "Absolute-form GETs are forwarded, CONNECT is tunnelled, each request line recorded; `refuse` answers 502."
    import socket
    with LoopbackServer({'/a': b'abc', '/b': b'defg'}, hosts=2) as srv, LoopbackProxy() as proxy:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({'http': proxy.url}))
        assert [opener.open(srv.url(p, h), timeout=5).read() for p,h in [('/a', 0), ('/b', 1)]] == [b'abc', b'defg']
        port = srv.servers[0].server_address[1]
        with socket.create_connection(('127.0.0.1', int(proxy.url.rsplit(':', 1)[1])), timeout=5) as s:
            s.sendall(f'CONNECT {srv.ip(1)}:{port} HTTP/1.1\r\nHost: {srv.ip(1)}:{port}\r\n\r\n'.encode())
            assert s.recv(100).startswith(b'HTTP/1.1 200')
            c = http.client.HTTPConnection(srv.ip(1), port, timeout=5); c.sock = s   # speak HTTP through the tunnel
            c.request('GET', '/a'); assert c.getresponse().read() == b'abc'
        assert proxy.requests == [('GET', srv.url('/a')), ('GET', srv.url('/b', 1)), ('CONNECT', f'{srv.ip(1)}:{port}')]
        assert srv.hits == {'/a': 2, '/b': 1}
    with LoopbackProxy(refuse=True) as proxy, LoopbackServer({'/a': b'abc'}) as srv:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({'http': proxy.url}))
        with pytest.raises(urllib.error.HTTPError, match='502'): opener.open(srv.url('/a'), timeout=5)
        assert srv.n_requests == 0

def test_no_nagle():
    "The server's connections have TCP_NODELAY, as real web servers do: a body written after its headers does not wait ~40 ms for a delayed ACK."
    import socket
    with LoopbackServer({'/a.jpg': bytes(40_000)}) as srv:
        c = http.client.HTTPConnection(srv.ip(0), srv.servers[0].server_address[1], timeout=5)
        c.request('GET', '/a.jpg'); assert len(c.getresponse().read()) == 40_000   # the connection stays open: keep-alive
        with srv._lock: socks = list(srv._socks)
        assert len(socks) == 1 and socks[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        c.close()

def test_track_keeps_threads_not_started_yet():
    "The serve threads of two hosts track handler threads at once: one tracked but not started yet is still joined on close."
    srv = LoopbackServer()
    t1, t2 = threading.Thread(target=lambda: None), threading.Thread(target=lambda: None)
    srv._track(t1); srv._track(t2)
    assert srv._threads == {t1, t2}

def test_trailing_bytes_after_the_body():
    "A route with `trailing` sends more than its Content-Length, on the same connection, and then answers the next request."
    import socket
    with LoopbackServer({'/a': Route(b'12345', trailing=b'EXTRA'), '/b': b'next'}) as srv, \
         socket.create_connection((srv.ip(), srv.servers[0].server_address[1]), timeout=5) as c:
        c.sendall(b'GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n')
        got, end = b'', time.monotonic() + 5
        while not got.endswith(b'next') and time.monotonic() < end: got += c.recv(4096)
    first, rest = got.split(b'\r\n\r\n', 1)
    assert b'Content-Length: 5' in first and rest.startswith(b'12345EXTRAHTTP/1.1 200') and rest.endswith(b'next')
