"""Authoritative DNS server on loopback for tests.

Tests point their resolvers at this server so that MX, A, AAAA, CNAME and
TXT (DKIM key) lookups never leave the machine. It serves one flat set of
records over UDP and TCP on the same port from a background thread, and
accepts changes while it runs.

It does not implement zones: there is no SOA in negative answers, no
delegation, no wildcards and no DNSSEC signing. It can stand in for a
validating resolver, though: names under a domain marked with
``set_secure`` get the AD flag when the query sets the DO bit, and names
marked with ``set_failing`` get SERVFAIL, as a bogus signature would.
"""

from __future__ import annotations

import logging
import selectors
import socket
import struct
import threading

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

log = logging.getLogger(__name__)

# RFC 1035 section 4.2.1: without EDNS a UDP response must fit in 512 octets.
UDP_MAX_WITHOUT_EDNS = 512
TXT_STRING_MAX = 255
# Bounds a CNAME chain so that a loop in the test data ends the lookup.
CNAME_CHAIN_MAX = 8
TCP_IDLE_TIMEOUT = 5.0
BIND_ATTEMPTS = 50


class DnsServer:
    """Authoritative DNS server for a fixed set of test records.

    Names are case-insensitive and may be given with or without the trailing
    dot. A known name without the requested type gets NOERROR with an empty
    answer section, an unknown name gets NXDOMAIN, and every answer has the
    AA flag set.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        # name -> rdtype -> (ttl, rdatas). Guarded by _lock because tests add
        # records from their own thread while the server thread reads them.
        self._records: dict[dns.name.Name, dict[dns.rdatatype.RdataType, tuple[int, list[dns.rdata.Rdata]]]] = {}
        self._lock = threading.Lock()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wakeup_reader: socket.socket | None = None
        self._wakeup_writer: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._tcp_connections: set[socket.socket] = set()
        # Domains whose answers, and their subdomains', carry the AD flag.
        self._secure: set[dns.name.Name] = set()
        self._failing: set[dns.name.Name] = set()

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def add(self, name: str, rtype: str, value: str, ttl: int = 60) -> None:
        """Add one record, given in zone-file text form.

        TXT values are the raw unquoted text of any length. They are split
        into 255-octet character-strings as RFC 1035 section 3.3.14 requires.
        """
        if ttl < 0:
            raise ValueError(f"invalid TTL {ttl} for {name} {rtype}: must be >= 0")
        owner = _to_name(name)
        rdtype = dns.rdatatype.from_text(rtype)
        if rdtype == dns.rdatatype.TXT:
            rdata = _make_txt(value)
        else:
            rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, value, origin=dns.name.root, relativize=False)

        with self._lock:
            rrsets = self._records.setdefault(owner, {})
            _, rdatas = rrsets.get(rdtype, (ttl, []))
            # One TTL per RRset (RFC 2181 section 5.2), so the latest one wins.
            rrsets[rdtype] = (ttl, [*rdatas, rdata])

    def remove(self, name: str, rtype: str | None = None) -> None:
        """Remove the records of one type at a name, or all of them if rtype is None.

        A name left with no records becomes unknown and gets NXDOMAIN. Removing
        records that do not exist does nothing.
        """
        owner = _to_name(name)
        with self._lock:
            if rtype is None:
                self._records.pop(owner, None)
                return
            rrsets = self._records.get(owner)
            if rrsets is None:
                return
            rrsets.pop(dns.rdatatype.from_text(rtype), None)
            if not rrsets:
                del self._records[owner]

    def set_secure(self, domain: str, secure: bool = True) -> None:
        """Mark answers at domain and below as DNSSEC-validated (AD), or stop."""
        with self._lock:
            (self._secure.add if secure else self._secure.discard)(_to_name(domain))

    def set_failing(self, name: str, failing: bool = True) -> None:
        """Answer SERVFAIL for queries of exactly name, or stop."""
        with self._lock:
            (self._failing.add if failing else self._failing.discard)(_to_name(name))

    def start(self) -> None:
        """Bind UDP and TCP on the same port and start serving in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("DnsServer.start() called twice: create a new DnsServer instead")

        self._udp, self._tcp = _bind_udp_and_tcp(self.host, self.port)
        self.host, self.port = self._udp.getsockname()[:2]
        self._wakeup_reader, self._wakeup_writer = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name=f"dns-{self.host}:{self.port}", daemon=True)
        self._thread.start()
        log.debug("DNS test server listening on %s port %d (UDP and TCP)", self.host, self.port)

    def stop(self) -> None:
        """Stop serving and close the sockets. Calling it again does nothing."""
        if self._thread is None or self._stopping.is_set():
            return
        self._stopping.set()
        assert self._wakeup_writer is not None
        self._wakeup_writer.send(b"\0")
        self._thread.join(timeout=5)
        with self._lock:
            connections = list(self._tcp_connections)
        for conn in connections:
            # Unblocks the connection thread's recv() so that it ends now.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for sock in (self._udp, self._tcp, self._wakeup_reader, self._wakeup_writer):
            if sock is not None:
                sock.close()
        log.debug("DNS test server on %s port %d stopped", self.host, self.port)

    def _serve(self) -> None:
        assert self._udp is not None
        assert self._tcp is not None
        assert self._wakeup_reader is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ)
            selector.register(self._tcp, selectors.EVENT_READ)
            selector.register(self._wakeup_reader, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._udp:
                        self._serve_udp_datagram()
                    elif key.fileobj is self._tcp:
                        self._accept_tcp()

    def _serve_udp_datagram(self) -> None:
        assert self._udp is not None
        try:
            data, peer = self._udp.recvfrom(65535)
        except OSError as exc:
            log.warning("DNS test server: UDP receive failed: %s", exc)
            return
        response = self._respond(data, over_udp=True)
        if response is not None:
            try:
                self._udp.sendto(response, peer)
            except OSError as exc:
                log.warning("DNS test server: UDP send to %s failed: %s", peer, exc)

    def _accept_tcp(self) -> None:
        assert self._tcp is not None
        try:
            conn, peer = self._tcp.accept()
        except OSError as exc:
            log.warning("DNS test server: TCP accept failed: %s", exc)
            return
        with self._lock:
            self._tcp_connections.add(conn)
        # A thread per connection keeps one slow TCP client from stalling the
        # UDP side, which matters more than efficiency in tests.
        threading.Thread(target=self._serve_tcp_connection, args=(conn, peer), daemon=True).start()

    def _serve_tcp_connection(self, conn: socket.socket, peer: tuple) -> None:
        conn.settimeout(TCP_IDLE_TIMEOUT)
        try:
            self._serve_tcp_queries(conn, peer)
        finally:
            with self._lock:
                self._tcp_connections.discard(conn)
            conn.close()

    def _serve_tcp_queries(self, conn: socket.socket, peer: tuple) -> None:
        # RFC 7766 section 6.2.1: a client may send several queries on one connection.
        while not self._stopping.is_set():
            try:
                header = _recv_exactly(conn, 2)
                if header is None:
                    return
                (length,) = struct.unpack("!H", header)
                query = _recv_exactly(conn, length)
                if query is None:
                    return
                response = self._respond(query, over_udp=False)
                if response is None:
                    return
                conn.sendall(struct.pack("!H", len(response)) + response)
            except (TimeoutError, OSError) as exc:
                log.debug("DNS test server: TCP connection from %s ended: %s", peer, exc)
                return

    def _respond(self, wire: bytes, over_udp: bool) -> bytes | None:
        """Build the wire response to one query, or return None to drop the query."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException as exc:
            log.warning("DNS test server: dropped unparsable query (%d octets): %s", len(wire), exc)
            return None

        max_size = 65535
        if over_udp:
            max_size = max(query.payload, UDP_MAX_WITHOUT_EDNS) if query.edns >= 0 else UDP_MAX_WITHOUT_EDNS
        try:
            response = self._build_response(query)
            # prefer_truncation sets TC and leaves out the RRsets that do not
            # fit, so the client retries over TCP.
            return response.to_wire(max_size=max_size, prefer_truncation=True)
        except Exception:
            # Keeps the server thread alive, so the test gets SERVFAIL plus this
            # log entry rather than a resolver timeout.
            log.exception("DNS test server: failed to answer %s", query.question)
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire(max_size=max_size, prefer_truncation=True)

    def _build_response(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif len(query.question) != 1 or query.question[0].rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.FORMERR)
        else:
            question = query.question[0]
            with self._lock:
                failing = question.name in self._failing
                secure = any(question.name.is_subdomain(domain) for domain in self._secure)
            if failing:
                response.set_rcode(dns.rcode.SERVFAIL)
                return response
            self._answer(response, question.name, question.rdtype)
            if secure and query.ednsflags & dns.flags.DO:
                response.flags |= dns.flags.AD
        return response

    def _answer(self, response: dns.message.Message, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> None:
        name = qname
        with self._lock:
            for _ in range(CNAME_CHAIN_MAX):
                rrsets = self._records.get(name)
                if rrsets is None:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                    return

                if rdtype == dns.rdatatype.ANY:
                    for found_type, (ttl, rdatas) in rrsets.items():
                        response.answer.append(_make_rrset(name, found_type, ttl, rdatas))
                    return
                if rdtype in rrsets:
                    ttl, rdatas = rrsets[rdtype]
                    response.answer.append(_make_rrset(name, rdtype, ttl, rdatas))
                    return
                if dns.rdatatype.CNAME not in rrsets:
                    return

                ttl, rdatas = rrsets[dns.rdatatype.CNAME]
                response.answer.append(_make_rrset(name, dns.rdatatype.CNAME, ttl, rdatas))
                name = rdatas[0].target
        log.warning("DNS test server: CNAME chain from %s longer than %d, answering SERVFAIL", qname, CNAME_CHAIN_MAX)
        response.set_rcode(dns.rcode.SERVFAIL)


def _to_name(text: str) -> dns.name.Name:
    # Relative names are taken as absolute, so "example.com" and
    # "example.com." are the same owner. dns.name.Name compares case-insensitively.
    return dns.name.from_text(text, origin=dns.name.root)


def _make_txt(value: str) -> dns.rdata.Rdata:
    raw = value.encode("utf-8")
    strings = [raw[i : i + TXT_STRING_MAX] for i in range(0, len(raw), TXT_STRING_MAX)] or [b""]
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings)


def _make_rrset(
    name: dns.name.Name, rdtype: dns.rdatatype.RdataType, ttl: int, rdatas: list[dns.rdata.Rdata]
) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, dns.rdataclass.IN, rdtype)
    for rdata in rdatas:
        rrset.add(rdata, ttl)
    return rrset


def _bind_udp_and_tcp(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """Bind a UDP and a TCP socket to the same port.

    With port 0 the kernel picks a free UDP port, which may be taken for TCP,
    so this retries with new ports until both binds succeed.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    attempts = BIND_ATTEMPTS if port == 0 else 1
    last_error: OSError | None = None
    for _ in range(attempts):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            udp.bind((host, port))
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((host, udp.getsockname()[1]))
            tcp.listen(16)
        except OSError as exc:
            udp.close()
            tcp.close()
            last_error = exc
            continue
        return udp, tcp
    raise OSError(
        f"failed to bind UDP and TCP on {host} port {port} after {attempts} attempts: {last_error}; "
        "pass port=0 to let the kernel pick a free port"
    )


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    """Read exactly size octets, or return None if the peer closed the connection first."""
    chunks = []
    remaining = size
    while remaining:
        chunk = conn.recv(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
