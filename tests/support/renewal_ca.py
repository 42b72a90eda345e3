#!/usr/bin/env python3
"""A local certificate authority on loopback for firmad's renewal tests.

Serves IDSE-style renewal endpoints and EST (RFC 7030) ones, issuing with the
openssl command from a test CA, and misbehaves on demand: before every request
it re-reads the words in DIR/control, listed below. Every request is appended
to DIR/requests.log as "METHOD PATH STATUS" (STATUS "-" when nothing is sent).

  renewal_ca.py --dir D --ca-cert CA.pem --ca-key CA.key --port-file F [--tls] [--lifetime 600]

Control words (whitespace separated; "op:word" limits a word to one endpoint,
op being lookup, submit, fetch, cacerts or reenroll):
  timeout        read the request, answer nothing for 30 s, close       (all)
  http500        500 with ERROR=...                                      (all)
  redirect       302 (307 for POST) once, to the same URL plus r=1       (all)
  redirect_loop  redirect every time                                     (all)
  reject         IDSE: ESTADO=RECHAZADO; EST: 400                        (submit, reenroll)
  wait=N         pending: N fetches (IDSE) or N re-posts (EST) get 202   (submit, reenroll)
  wrong_key      the issued certificate carries a fresh, unrelated key   (submit, reenroll)
  expired        the issued certificate's validity ended yesterday       (submit, reenroll)
  untrusted      issued by a fresh CA with the real CA's name            (submit, reenroll)
  garbage        200 with random bytes in place of the answer            (fetch, reenroll)
  huge           200 with Content-Length 104857600, that many bytes      (fetch, reenroll)
  endless        200 chunked, streamed until 256 MiB or the client goes  (fetch, reenroll)
  delay=MS       wait MS milliseconds (at most 10000) before answering    (all)
Issuing modes act when the certificate is issued (at submit for IDSE, even if
it is then held pending; expired takes precedence over wrong_key); answer
modes replace the answer that would have been sent after the request was
processed. With --tls, a client certificate that does not chain to the CA (or
has expired) fails the TLS handshake; none at all gets 401 from simplereenroll.
Standard library only.
"""

import argparse
import base64
import hashlib
import os
import secrets
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ALL_OPS = {"lookup", "submit", "fetch", "cacerts", "reenroll"}
DEFAULT_SCOPE = {
    "timeout": ALL_OPS,
    "http500": ALL_OPS,
    "redirect": ALL_OPS,
    "redirect_loop": ALL_OPS,
    "reject": {"submit", "reenroll"},
    "wait": {"submit", "reenroll"},
    "wrong_key": {"submit", "reenroll"},
    "expired": {"submit", "reenroll"},
    "untrusted": {"submit", "reenroll"},
    "garbage": {"fetch", "reenroll"},
    "huge": {"fetch", "reenroll"},
    "endless": {"fetch", "reenroll"},
    "delay": ALL_OPS,
}
ROUTES = {
    "/idse/consultaSerie.idse": ("GET", "lookup"),
    "/idse/solicitudRenovacion.idse": ("POST", "submit"),
    "/idse/instalaRenovacion.idse": ("GET", "fetch"),
    "/.well-known/est/cacerts": ("GET", "cacerts"),
    "/.well-known/est/simplereenroll": ("POST", "reenroll"),
}
MAX_BODY = 1 << 20
HUGE_BYTES = 104857600
ENDLESS_LIMIT = 256 << 20
TIMEOUT_SECONDS = 30
CERT_EXTENSIONS = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,nonRepudiation\n"
PKCS7_TYPE = "application/pkcs7-mime; smime-type=certs-only"


def warn(message):
    print(f"renewal_ca: {message}", file=sys.stderr, flush=True)


class OpensslError(Exception):
    pass


def openssl(*args, data=None, stderr_must_have=None):
    """Runs the openssl command; returns its stdout, raises OpensslError with its stderr.

    stderr_must_have: text whose absence from stderr is a failure too (OpenSSL
    3.0's `req -verify` reports a bad signature there yet exits 0)."""
    r = subprocess.run(["openssl", *args], input=data, capture_output=True, timeout=60)
    err = r.stderr.decode(errors="replace").strip()
    if r.returncode != 0 or (stderr_must_have and stderr_must_have not in err):
        raise OpensslError(f"openssl {args[0]} failed: {err}")
    return r.stdout


def subject_of(out):
    """The value of openssl's 'subject=...' line."""
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("subject="):
            return line[len("subject="):].strip()
    return ""


def pem_to_der(pem_path, der_path):
    openssl("x509", "-in", pem_path, "-outform", "DER", "-out", der_path)


class Modes:
    """The control words that apply to one request on one endpoint."""

    def __init__(self, words, op):
        self.words = set()
        self.wait = 0
        self.delay_ms = 0
        for raw in words:
            scope, _, word = raw.rpartition(":")
            name, _, value = word.partition("=")
            if name not in DEFAULT_SCOPE:
                warn(f"unknown control word ignored: {raw}")
                continue
            if (scope and scope != op) or (not scope and op not in DEFAULT_SCOPE[name]):
                continue
            if name == "wait":
                try:
                    self.wait = max(0, min(int(value), 1000))
                except ValueError:
                    warn(f"bad wait count ignored: {raw}")
                    continue
            if name == "delay":
                try:
                    self.delay_ms = max(0, min(int(value), 10000))
                except ValueError:
                    warn(f"bad delay ignored: {raw}")
                    continue
            self.words.add(name)

    def __contains__(self, name):
        return name in self.words


class Ca:
    """Issues certificates with openssl and remembers them (in memory and DIR/issued)."""

    def __init__(self, directory, ca_cert, ca_key):
        self.dir = directory
        self.ca_cert = ca_cert
        self.ca_key = ca_key
        self.work = os.path.join(directory, "work")
        self.issued_dir = os.path.join(directory, "issued")
        os.makedirs(self.work, exist_ok=True)
        os.makedirs(self.issued_dir, exist_ok=True)
        self.extfile = os.path.join(self.work, "leaf.ext")
        with open(self.extfile, "w") as f:
            f.write(CERT_EXTENSIONS)
        self.lock = threading.Lock()
        self.impostor = None  # (cert, key) of the untrusted CA, made on first use
        self.certs = {}  # serial -> DER certificate
        self.pending = {}  # serial -> fetches still to answer 202
        self.latest = {}  # NPIE -> serial of its most recent accepted request
        self.est_pending = {}  # sha256 of the CSR -> re-posts still to answer 202
        self.cacerts = base64.encodebytes(
            openssl("crl2pkcs7", "-nocrl", "-certfile", ca_cert, "-outform", "DER"))

    def tempdir(self):
        return tempfile.TemporaryDirectory(dir=self.work)

    def new_serial(self):
        # 16 hex digits with a non-zero first one: openssl prints it back unchanged.
        return format(secrets.randbits(63) | (1 << 60), "016X")

    def verify_csr(self, csr_der):
        """Checks the request's self-signature; returns its subject (RFC 2253) or raises OpensslError."""
        with self.tempdir() as t:
            path = os.path.join(t, "req.der")
            with open(path, "wb") as f:
                f.write(csr_der)
            return subject_of(openssl("req", "-inform", "DER", "-in", path, "-verify", "-noout",
                                      "-subject", "-nameopt", "RFC2253", stderr_must_have="verify OK"))

    def cert_subject(self, cert_der):
        with self.tempdir() as t:
            path = os.path.join(t, "cert.der")
            with open(path, "wb") as f:
                f.write(cert_der)
            return subject_of(openssl("x509", "-inform", "DER", "-in", path, "-noout",
                                      "-subject", "-nameopt", "RFC2253"))

    def verify_acceptance(self, cms_der):
        """Verifies a CMS SignedData against the CA, ignoring validity dates.

        Returns (content bytes, signer subject); raises OpensslError."""
        with self.tempdir() as t:
            cms, content, signer = (os.path.join(t, n) for n in ("cms.der", "content", "signer.pem"))
            with open(cms, "wb") as f:
                f.write(cms_der)
            openssl("cms", "-verify", "-binary", "-inform", "DER", "-in", cms, "-CAfile", self.ca_cert,
                    "-no_check_time", "-purpose", "any", "-signer", signer, "-out", content)
            with open(content, "rb") as f:
                data = f.read()
            return data, subject_of(openssl("x509", "-in", signer, "-noout", "-subject", "-nameopt", "RFC2253"))

    def impostor_ca(self):
        """A CA with the real CA's exact subject but its own key: nothing it issues chains."""
        with self.lock:
            if self.impostor:
                return self.impostor
            d = os.path.join(self.work, "impostor")
            os.makedirs(d, exist_ok=True)
            key, req, cert, ext = (os.path.join(d, n) for n in ("ca.key", "ca.csr", "ca.pem", "ca.ext"))
            openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
            openssl("x509", "-x509toreq", "-in", self.ca_cert, "-signkey", key, "-out", req)
            with open(ext, "w") as f:
                f.write("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
            openssl("x509", "-req", "-in", req, "-signkey", key, "-days", "3650", "-extfile", ext, "-out", cert)
            self.impostor = (cert, key)
            return self.impostor

    def issue(self, csr_der, modes):
        """Issues a certificate for a verified request under the issuing modes; returns (serial, DER)."""
        serial = self.new_serial()
        ca_cert, ca_key = self.impostor_ca() if "untrusted" in modes else (self.ca_cert, self.ca_key)
        with self.tempdir() as t:
            req, cert = os.path.join(t, "req.der"), os.path.join(t, "cert.pem")
            with open(req, "wb") as f:
                f.write(csr_der)
            if "expired" in modes:
                self._issue_expired(t, req, cert, ca_cert, ca_key, serial)
            else:
                args = ["x509", "-req", "-inform", "DER", "-in", req, "-CA", ca_cert, "-CAkey", ca_key,
                        "-days", "365", "-set_serial", "0x" + serial, "-extfile", self.extfile, "-out", cert]
                if "wrong_key" in modes:
                    other = os.path.join(t, "other.key")
                    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", other)
                    pub = os.path.join(t, "other.pub")
                    openssl("pkey", "-in", other, "-pubout", "-out", pub)
                    args += ["-force_pubkey", pub]
                openssl(*args)
            der_path = os.path.join(self.issued_dir, serial + ".der")
            pem_to_der(cert, der_path)
        with open(der_path, "rb") as f:
            return serial, f.read()

    def _issue_expired(self, t, req, cert, ca_cert, ca_key, serial):
        # openssl x509 in OpenSSL 3.0 cannot set a start date; openssl ca can.
        db = os.path.join(t, "db")
        os.makedirs(db)
        open(os.path.join(db, "index.txt"), "w").close()
        with open(os.path.join(db, "serial"), "w") as f:
            f.write(serial + "\n")
        conf = os.path.join(t, "ca.cnf")
        with open(conf, "w") as f:
            f.write(f"[ca]\ndefault_ca = test\n[test]\ndatabase = {db}/index.txt\nnew_certs_dir = {db}\n"
                    f"serial = {db}/serial\ndefault_md = sha256\npolicy = anything\nunique_subject = no\n"
                    f"email_in_dn = no\n[anything]\n[leaf]\n{CERT_EXTENSIONS}")
        now = datetime.now(timezone.utc)
        openssl("ca", "-batch", "-config", conf, "-cert", ca_cert, "-keyfile", ca_key, "-in", req,
                "-inform", "DER", "-startdate", (now - timedelta(days=30)).strftime("%Y%m%d%H%M%SZ"),
                "-enddate", (now - timedelta(days=1)).strftime("%Y%m%d%H%M%SZ"), "-extensions", "leaf",
                "-preserveDN", "-notext", "-out", cert)

    def pkcs7_of(self, cert_der):
        """A DER certs-only PKCS#7 holding one certificate."""
        with self.tempdir() as t:
            der, pem = os.path.join(t, "c.der"), os.path.join(t, "c.pem")
            with open(der, "wb") as f:
                f.write(cert_der)
            openssl("x509", "-inform", "DER", "-in", der, "-out", pem)
            return openssl("crl2pkcs7", "-nocrl", "-certfile", pem, "-outform", "DER")


def make_server_certificate(ca, directory):
    """A TLS server key and certificate for 127.0.0.1/localhost issued by the test CA."""
    d = os.path.join(directory, "tls")
    os.makedirs(d, exist_ok=True)
    key, req, cert, ext = (os.path.join(d, n) for n in ("server.key", "server.csr", "server.pem", "server.ext"))
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
            "-subj", "/O=firmad test/CN=127.0.0.1", "-out", req)
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", req, "-CA", ca.ca_cert, "-CAkey", ca.ca_key, "-days", "30",
            "-set_serial", "0x" + ca.new_serial(), "-extfile", ext, "-out", cert)
    return cert, key


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, ca, directory, ssl_context):
        self.ca = ca
        self.directory = directory
        self.ssl_context = ssl_context
        self.log_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), Handler)

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the connection's own thread, so a
        # silent client cannot stall the accept loop.
        if self.ssl_context is None:
            return super().finish_request(request, client_address)
        request.settimeout(10)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            warn(f"TLS handshake with {client_address[0]}:{client_address[1]} failed: {e}")
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.settimeout(1)
                tls.unwrap()
            except (ssl.SSLError, OSError, ValueError):
                pass
            tls.close()

    def handle_error(self, request, client_address):
        warn(f"error serving {client_address[0]}:{client_address[1]}: {sys.exc_info()[1]!r}")

    def control_words(self):
        try:
            with open(os.path.join(self.directory, "control")) as f:
                return f.read().split()
        except FileNotFoundError:
            return []

    def record(self, method, path, status):
        with self.log_lock, open(os.path.join(self.directory, "requests.log"), "a") as f:
            f.write(f"{method} {path} {status}\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "renewal-ca/1"
    timeout = TIMEOUT_SECONDS  # idle keep-alive connections and stalled writes

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    # -- answers ---------------------------------------------------------

    def answer(self, status, body=b"", ctype="text/plain", headers=(), close=False):
        if isinstance(body, str):
            body = body.encode()
        self.server.record(self.command, self.path, status)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def stream(self, ctype, chunked):
        """Streams random bytes: 100 MiB with a Content-Length, or chunks until 256 MiB."""
        self.server.record(self.command, self.path, 200)
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(HUGE_BYTES))
        self.send_header("Connection", "close")
        self.end_headers()
        block = os.urandom(1 << 16)
        sent, limit = 0, ENDLESS_LIMIT if chunked else HUGE_BYTES
        try:
            while sent < limit:
                piece = block[: min(len(block), limit - sent)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            self.wfile.flush()
        except (OSError, ssl.SSLError) as e:
            warn(f"stream stopped after {sent} bytes: {e!r}")

    def garbage(self, ctype, base64_body=False):
        data = bytearray(os.urandom(1024 + secrets.randbelow(3072)))
        data[0] = 0x47  # never 0x30, the first byte of any DER certificate or PKCS#7
        body = base64.encodebytes(bytes(data)) if base64_body else bytes(data)
        self.answer(200, body, ctype)

    def hang(self):
        """Sends nothing for 30 s (less if the client hangs up first), then closes."""
        self.server.record(self.command, self.path, "-")
        self.close_connection = True
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                readable, _, _ = select.select([self.connection], [], [], 0.5)
                if readable and not self.connection.recv(4096):
                    return
            except (OSError, ssl.SSLError, ValueError):
                return

    def replaced(self, modes, ctype, base64_body=False):
        """Sends the answer a garbage/huge/endless mode puts in place of the real one; True if it did."""
        if "endless" in modes:
            self.stream(ctype, chunked=True)
        elif "huge" in modes:
            self.stream(ctype, chunked=False)
        elif "garbage" in modes:
            self.garbage(ctype, base64_body)
        else:
            return False
        return True

    def redirect(self, query):
        r = parse_qs(query).get("r", ["0"])[0]
        n = int(r) + 1 if r.isdigit() and len(r) < 9 else 1
        target = urlsplit(self.path).path + "?" + "&".join(
            [p for p in query.split("&") if p and not p.startswith("r=")] + [f"r={n}"])
        scheme = "https" if self.server.ssl_context else "http"
        location = f"{scheme}://127.0.0.1:{self.server.server_address[1]}{target}"
        # 307 keeps a POST a POST (with its body); 302 would turn it into a GET in most clients.
        self.answer(307 if self.command == "POST" else 302, f"redirigido a {target}\n",
                    headers=[("Location", location)])

    # -- dispatch --------------------------------------------------------

    def read_body(self):
        """The request body, or None after answering 411/413 for a missing or oversize one."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.answer(411, "ERROR=se requiere Content-Length\n", close=True)
            return None
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            if self.command == "POST":
                self.answer(411, "ERROR=se requiere Content-Length\n", close=True)
                return None
            return b""
        if int(length) > MAX_BODY:
            self.answer(413, "ERROR=cuerpo demasiado grande\n", close=True)
            return None
        return self.rfile.read(int(length))

    def dispatch(self, method):
        url = urlsplit(self.path)
        body = self.read_body()
        if body is None:
            return
        route = ROUTES.get(url.path)
        if route is None:
            return self.answer(404, "ERROR=ruta desconocida\n")
        if route[0] != method:
            return self.answer(405, "ERROR=metodo no permitido\n", headers=[("Allow", route[0])])
        op = route[1]
        modes = Modes(self.server.control_words(), op)
        query = parse_qs(url.query, keep_blank_values=True)
        if "delay" in modes:
            time.sleep(modes.delay_ms / 1000)
        if "timeout" in modes:
            return self.hang()
        if "http500" in modes:
            return self.answer(500, "ERROR=falla interna de prueba\n")
        if "redirect_loop" in modes or ("redirect" in modes and "r" not in query):
            return self.redirect(url.query)
        try:
            getattr(self, "op_" + op)(query, body, modes)
        except OpensslError as e:
            warn(str(e))
            self.answer(500, "ERROR=falla de la CA de prueba\n")

    # -- IDSE ------------------------------------------------------------

    def op_lookup(self, query, body, modes):
        npie = query.get("NPIE", [""])[0]
        if not npie:
            return self.answer(400, "ERROR=falta NPIE\n")
        with self.server.ca.lock:
            serial = self.server.ca.latest.get(npie)
        if serial is None:
            return self.answer(404, "ERROR=sin certificado\n")
        if not self.replaced(modes, "text/plain"):
            self.answer(200, f"SERIAL_NOM={serial}\n")

    def op_submit(self, query, body, modes):
        ca = self.server.ca
        if self.headers.get_content_type() != "application/x-www-form-urlencoded":
            return self.answer(415, "ERROR=se espera application/x-www-form-urlencoded\n")
        try:
            form = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            return self.answer(400, "ERROR=formulario mal formado\n")
        field = {k: v[0] for k, v in form.items() if len(v) == 1}
        npie = field.get("NPIE", "")
        if not npie or len(npie) > 64 or not npie.isprintable() or any(c.isspace() for c in npie):
            return self.answer(400, "ERROR=NPIE invalido\n")
        csr = decode_base64(field.get("CSR", ""), allow_spaces=False)
        if not csr:
            return self.answer(400, "ERROR=CSR no es base64 valido\n")
        acceptance = decode_base64(field.get("ACEPTACION", ""), allow_spaces=False)
        if not acceptance:
            return self.answer(400, "ERROR=ACEPTACION no es base64 valido\n")
        try:
            subject = ca.verify_csr(csr)
        except OpensslError as e:
            warn(str(e))
            return self.answer(400, "ERROR=CSR invalido o con firma incorrecta\n")
        try:
            content, signer = ca.verify_acceptance(acceptance)
        except OpensslError as e:
            warn(str(e))
            return self.answer(400, "ERROR=ACEPTACION con firma invalida\n")
        if b"ACEPTO" not in content:
            return self.answer(400, "ERROR=ACEPTACION sin la leyenda ACEPTO\n")
        if signer != subject:
            warn(f"signer {signer!r} is not the requester {subject!r}")
            return self.answer(400, "ERROR=el firmante no es el solicitante\n")
        if "reject" in modes:
            if not self.replaced(modes, "text/plain"):
                self.answer(200, "ESTADO=RECHAZADO\nMOTIVO=solicitud rechazada por prueba\n")
            return
        serial, cert = ca.issue(csr, modes)
        with ca.lock:
            ca.certs[serial] = cert
            ca.pending[serial] = modes.wait if "wait" in modes else 0
            ca.latest[npie] = serial
        if self.replaced(modes, "text/plain"):
            return
        if ca.pending[serial] > 0:
            self.answer(200, f"ESTADO=PENDIENTE\nSERIAL_NOM={serial}\nREINTENTAR=1\n")
        else:
            self.answer(200, f"ESTADO=EMITIDO\nSERIAL_NOM={serial}\n")

    def op_fetch(self, query, body, modes):
        ca = self.server.ca
        serial = query.get("SERIAL_NOM", [""])[0].upper()
        if not serial:
            return self.answer(400, "ERROR=falta SERIAL_NOM\n")
        with ca.lock:
            cert = ca.certs.get(serial)
            waiting = ca.pending.get(serial, 0)
            if waiting > 0:
                ca.pending[serial] = waiting - 1
        if cert is None:
            return self.answer(404, "ERROR=serie desconocida\n")
        if waiting > 0:
            return self.answer(202, "ESTADO=PENDIENTE\n", headers=[("Retry-After", "1")])
        if not self.replaced(modes, "application/pkix-cert"):
            self.answer(200, cert, "application/pkix-cert")

    # -- EST (RFC 7030) --------------------------------------------------

    def op_cacerts(self, query, body, modes):
        if not self.replaced(modes, "application/pkcs7-mime", base64_body=True):
            self.answer(200, self.server.ca.cacerts, "application/pkcs7-mime",
                        headers=[("Content-Transfer-Encoding", "base64")])

    def op_reenroll(self, query, body, modes):
        ca = self.server.ca
        client = self.connection.getpeercert(binary_form=True) if isinstance(self.connection, ssl.SSLSocket) else None
        if not client:
            # The handshake already refused certificates that do not chain to the CA.
            return self.answer(401, "se requiere un certificado de cliente emitido por la CA\n")
        if self.headers.get_content_type() != "application/pkcs10":
            return self.answer(415, "se espera application/pkcs10\n")
        csr = decode_base64(body.decode("ascii", errors="replace"), allow_spaces=True)
        if not csr:
            return self.answer(400, "el cuerpo no es base64 valido\n")
        try:
            subject = ca.verify_csr(csr)
        except OpensslError as e:
            warn(str(e))
            return self.answer(400, "CSR invalido o con firma incorrecta\n")
        holder = ca.cert_subject(client)
        if holder != subject:
            warn(f"client certificate {holder!r} asks for {subject!r}")
            return self.answer(403, "el sujeto del CSR no es el del certificado de cliente\n")
        if "reject" in modes:
            return self.answer(400, "solicitud rechazada por prueba\n")
        if "wait" in modes:
            key = hashlib.sha256(csr).hexdigest()
            with ca.lock:
                left = ca.est_pending.setdefault(key, modes.wait)
                if left > 0:
                    ca.est_pending[key] = left - 1
                else:
                    del ca.est_pending[key]
            if left > 0:
                return self.answer(202, b"", headers=[("Retry-After", "1")])
        serial, cert = ca.issue(csr, modes)
        with ca.lock:
            ca.certs[serial] = cert
        if not self.replaced(modes, PKCS7_TYPE, base64_body=True):
            self.answer(200, base64.encodebytes(ca.pkcs7_of(cert)), PKCS7_TYPE,
                        headers=[("Content-Transfer-Encoding", "base64")])


def decode_base64(text, allow_spaces):
    """Strict base64 (line breaks allowed; other whitespace only if allow_spaces); b'' if invalid."""
    cleaned = "".join(text.split()) if allow_spaces else text.replace("\r", "").replace("\n", "")
    try:
        return base64.b64decode(cleaned, validate=True)
    except ValueError:
        return b""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True)
    p.add_argument("--ca-cert", required=True)
    p.add_argument("--ca-key", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--lifetime", type=float, default=600)
    a = p.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    os.makedirs(a.dir, exist_ok=True)
    ca = Ca(a.dir, os.path.abspath(a.ca_cert), os.path.abspath(a.ca_key))
    context = None
    if a.tls:
        cert, key = make_server_certificate(ca, a.dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.load_verify_locations(ca.ca_cert)
        # Requested, not required: /simplereenroll answers 401 itself without one.
        context.verify_mode = ssl.CERT_OPTIONAL
    server = Server(ca, a.dir, context)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()

    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{server.server_address[1]}\n")
    os.replace(tmp, a.port_file)
    warn(f"listening on 127.0.0.1:{server.server_address[1]} tls={'yes' if a.tls else 'no'} lifetime={a.lifetime:g}s")

    stop.wait(a.lifetime)
    warn("stopping")
    server.shutdown()
    sys.stderr.flush()
    # Handler threads may be mid-stream or mid-timeout; they end with the process.
    os._exit(0)


if __name__ == "__main__":
    main()
