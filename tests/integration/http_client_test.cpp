// The renewal HTTP(S) client against real servers on 127.0.0.1: verification, client certificates, redirects, limits.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/pem.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "daemon/renewal/http_client.hpp"
#include "pkcs11/openssl.hpp"
#include "rig.hpp"

using namespace firmad;
namespace http = firmad::http;
using firmad::test::TempDir;
using Kind = http::Error::Kind;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

// A test CA and the certificates the servers and the client use (EC P-256: quick to make).
const char* const kMakeCertificates = R"(set -eu
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"; }
ca() { key "$1"; openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 2 -subj "/CN=$2"; }
leaf() {
  key "$1"
  openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr"
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=%s\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n' "$3" "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 2 -extfile "$1.ext" -out "$1.pem"
}
ca ca "firmad test CA"
ca other-ca "some other CA"
leaf server ca "IP:127.0.0.1,DNS:localhost" serverAuth
leaf other other-ca "IP:127.0.0.1,DNS:localhost" serverAuth
leaf wrongname ca "DNS:renewal.example.com" serverAuth
leaf client ca "email:renewal@example.com" clientAuth
)";

// Plain HTTP and four HTTPS servers (trusted, other CA, wrong name, client
// certificate required), each on its own port, written to <dir>/ports.
const char* const kServers = R"PY(
import http.server, os, ssl, sys, threading, urllib.parse

d = sys.argv[1]
P = lambda n: os.path.join(d, n)

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass

    def reply(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers: self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD": self.wfile.write(body)

    def stream(self, chunk):
        try:
            while True: self.wfile.write(chunk)
        except OSError: pass

    def handle_any(self):
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        p = u.path
        if p == "/hello":
            self.reply(200, b"hello firmad", [("Content-Type", "text/plain"), ("X-Twice", "a"), ("X-Twice", "b")])
        elif p == "/echo":
            c = self.connection
            cert = c.getpeercert() if isinstance(c, ssl.SSLSocket) else None
            cn = dict(x[0] for x in cert["subject"]).get("commonName", "") if cert else ""
            lines = ["method=" + self.command, "target=" + self.path,
                     "host=" + str(self.headers.get("Host")),
                     "user-agent=" + str(self.headers.get("User-Agent")),
                     "content-length=" + str(self.headers.get("Content-Length")),
                     "content-type=" + str(self.headers.get("Content-Type")),
                     "connection=" + str(self.headers.get("Connection")),
                     "authorization=" + str(self.headers.get("Authorization")),
                     "sni=" + str(getattr(c, "firmad_sni", None)),
                     "client=" + cn, "body=" + body.decode("latin-1")]
            self.reply(200, "\n".join(lines).encode("latin-1"))
        elif p == "/redirect":
            self.reply(int(q.get("code", "302")), b"moved", [("Location", q["to"])])
        elif p == "/loop":
            self.reply(302, b"", [("Location", "/loop")])
        elif p.startswith("/chain/"):
            k = int(p[len("/chain/"):])
            self.reply(302, b"", [("Location", "/chain/%d" % (k - 1) if k > 0 else "/hello")])
        elif p == "/dir/rel":
            self.reply(301, b"", [("Location", "../hello?from=rel")])
        elif p == "/sized":
            self.reply(200, b"x" * int(q["n"]))
        elif p == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(10 << 30))
            self.end_headers()
            self.stream(b"\0" * 65536)
        elif p == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if "n" not in q:
                self.stream(b"%x\r\n%s\r\n" % (65536, b"z" * 65536))
            else:
                left = int(q["n"])
                while left > 0:
                    k = min(left, 65536)
                    self.wfile.write(b"%x\r\n%s\r\n" % (k, b"z" * k))
                    left -= k
                self.wfile.write(b"0\r\n\r\n")
        elif p == "/bighead":
            self.reply(200, b"", [("X-Filler-%d" % i, "f" * 200) for i in range(200)])
        else:
            self.reply(404, b"no such path")
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_HEAD = handle_any

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    def __init__(self, ctx):
        super().__init__(("127.0.0.1", 0), Handler)
        self.ctx = ctx
    def finish_request(self, request, client_address):
        if self.ctx is None:
            return super().finish_request(request, client_address)
        try:
            # Handshake in the connection's thread: a silent client never blocks the others.
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()
    def handle_error(self, request, client_address): pass

def tls(cert, client_ca=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(P(cert + ".pem"), P(cert + ".key"))
    def sni(sock, name, c):
        sock.firmad_sni = name
    ctx.sni_callback = sni
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(P(client_ca))
    return ctx

servers = {"plain": Server(None), "good": Server(tls("server")), "other": Server(tls("other")),
           "wrongname": Server(tls("wrongname")), "mtls": Server(tls("server", "ca.pem"))}
for s in servers.values():
    threading.Thread(target=s.serve_forever, daemon=True).start()
with open(P("ports.tmp"), "w") as f:
    for name, s in servers.items():
        f.write("%s %d\n" % (name, s.server_address[1]))
os.rename(P("ports.tmp"), P("ports"))
threading.Event().wait()
)PY";

// A child process, terminated (and reaped) on destruction.
class Child {
 public:
  explicit Child(const std::vector<std::string>& args) {
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  Child(const Child&) = delete;  // owns a process
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    if (!firmad::test::eventually([&] { return ::waitpid(pid_, nullptr, WNOHANG) == pid_; }, milliseconds(3000))) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  bool started() const { return pid_ > 0; }

 private:
  pid_t pid_ = -1;
};

// A TCP socket bound to 127.0.0.1 on a free port. Listening but never
// accepting, it is a server that never answers; not listening, it is a
// closed port that no other process can take meanwhile.
class Socket {
 public:
  explicit Socket(bool listening) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        (listening && ::listen(fd_, 16) != 0) || ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
      throw std::runtime_error("cannot make a test socket");
    port_ = ntohs(addr.sin_port);
  }
  Socket(const Socket&) = delete;  // owns a socket
  Socket& operator=(const Socket&) = delete;
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

struct Servers {
  TempDir dir;
  std::unique_ptr<Child> child;
  std::map<std::string, int> ports;
};

// Resets the process's peak resident size; false where the kernel does not allow it.
bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return out.good();
}

long peak_rss_kib() {
  std::istringstream status(firmad::test::read_file("/proc/self/status"));
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

class HttpClient : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto s = std::make_unique<Servers>();
    const auto dir = s->dir.path();
    firmad::test::write_file(dir / "certs.sh", kMakeCertificates);
    firmad::test::write_file(dir / "servers.py", kServers);
    const auto made = firmad::test::run("cd " + firmad::test::quote(dir.string()) + " && bash certs.sh", 60);
    if (made.exit_code != 0) {
      setup_error_ = "making the test certificates failed: " + made.out;
      return;
    }
    s->child = std::make_unique<Child>(
        std::vector<std::string>{"/usr/bin/python3", (dir / "servers.py").string(), dir.string()});
    if (!s->child->started() ||
        !firmad::test::eventually([&] { return std::filesystem::exists(dir / "ports"); }, milliseconds(10000))) {
      setup_error_ = "the test servers did not start";
      return;
    }
    std::istringstream ports(firmad::test::read_file(dir / "ports"));
    std::string name;
    int port = 0;
    while (ports >> name >> port) s->ports[name] = port;
    servers_ = std::move(s);
  }
  static void TearDownTestSuite() { servers_.reset(); }
  void SetUp() override { ASSERT_TRUE(servers_ != nullptr) << setup_error_; }

  static std::string url(const std::string& server, const std::string& path, const std::string& host = "127.0.0.1") {
    const std::string scheme = server == "plain" ? "http" : "https";
    return scheme + "://" + host + ":" + std::to_string(servers_->ports.at(server)) + path;
  }
  static std::string file(const std::string& name) { return (servers_->dir.path() / name).string(); }
  static http::Tls trusting(const std::string& ca = "ca.pem") {
    http::Tls tls;
    tls.trust_anchor_files = {file(ca)};
    return tls;
  }
  static http::Request get(std::string u) {
    http::Request r;
    r.url = std::move(u);
    return r;
  }

  static std::unique_ptr<Servers> servers_;
  static std::string setup_error_;
};
std::unique_ptr<Servers> HttpClient::servers_;
std::string HttpClient::setup_error_;

// The http::Error a fetch throws; a test failure if it returns or throws anything else.
std::optional<http::Error> fetch_error(const http::Request& request, const http::Limits& limits = {},
                                       const http::Tls& tls = {}) {
  try {
    const http::Response r = http::fetch(request, limits, tls);
    ADD_FAILURE() << request.url << " was fetched (status " << r.status << "), expected an error";
  } catch (const http::Error& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << request.url << " threw something other than http::Error: " << e.what();
  }
  return std::nullopt;
}

#define EXPECT_FETCH_ERROR(request, limits, tls, expected_kind, text)                                       \
  do {                                                                                                      \
    const auto error_ = fetch_error(request, limits, tls);                                                  \
    ASSERT_TRUE(error_);                                                                                    \
    EXPECT_EQ(http::to_string(error_->kind()), std::string(http::to_string(expected_kind))) << error_->what(); \
    EXPECT_NE(std::string(error_->what()).find(text), std::string::npos) << error_->what();                 \
  } while (false)

ossl::X509Ptr read_certificate(const std::string& path) {
  ossl::Bio bio(BIO_new_file(path.c_str(), "r"));
  return ossl::X509Ptr(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr);
}

ossl::Pkey read_key(const std::string& path) {
  ossl::Bio bio(BIO_new_file(path.c_str(), "r"));
  return ossl::Pkey(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr);
}

long elapsed_ms(Clock::time_point since) {
  return static_cast<long>(std::chrono::duration_cast<milliseconds>(Clock::now() - since).count());
}

TEST_F(HttpClient, PlainGetReturnsStatusHeadersAndBody) {
  const http::Response r = http::fetch(get(url("plain", "/hello")), {}, {});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "hello firmad");
  EXPECT_EQ(r.headers.at("content-type"), "text/plain");
  EXPECT_EQ(r.headers.at("x-twice"), "a, b");
  EXPECT_EQ(r.url, url("plain", "/hello"));

  const http::Response missing = http::fetch(get(url("plain", "/nothing-here")), {}, {});
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.body, "no such path");
}

TEST_F(HttpClient, PostSendsBodyWithContentLengthHostAndUserAgent) {
  http::Request post = get(url("plain", "/echo?q=" + http::url_encode("a b/ñ")));
  post.method = "POST";
  post.headers = {{"Content-Type", "application/x-www-form-urlencoded"}};
  post.body = http::form_encode({{"csr", "AB+/="}, {"name", "EMPRESA DEMO"}});
  const http::Response r = http::fetch(post, {}, {});
  ASSERT_EQ(r.status, 200);
  const std::string port = std::to_string(servers_->ports.at("plain"));
  EXPECT_NE(r.body.find("method=POST\n"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("target=/echo?q=a%20b%2F%C3%B1\n"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("host=127.0.0.1:" + port + "\n"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("user-agent=firmad/"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("content-length=" + std::to_string(post.body.size()) + "\n"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("connection=close\n"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("body=csr=AB%2B%2F%3D&name=EMPRESA+DEMO"), std::string::npos) << r.body;
}

TEST_F(HttpClient, HeadReturnsHeadersWithoutWaitingForABody) {
  http::Request head = get(url("plain", "/hello"));
  head.method = "HEAD";
  http::Limits limits;
  limits.timeout = milliseconds(3000);
  const http::Response r = http::fetch(head, limits, {});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.headers.at("content-length"), "12");
  EXPECT_EQ(r.body, "");
}

TEST_F(HttpClient, UrlAndFormEncodingFollowRfc3986AndHtml) {
  EXPECT_EQ(http::url_encode("AZaz09-._~"), "AZaz09-._~");
  EXPECT_EQ(http::url_encode("a b&c=d/é*"), "a%20b%26c%3Dd%2F%C3%A9%2A");
  EXPECT_EQ(http::url_encode(std::string_view("\0\xff", 2)), "%00%FF");
  EXPECT_EQ(http::form_encode({}), "");
  EXPECT_EQ(http::form_encode({{"a b", "x+y z"}, {"k", ""}, {"*~", "-._"}}), "a+b=x%2By+z&k=&*%7E=-._");
}

TEST_F(HttpClient, HttpsServerVerifiedAgainstTheTrustAnchorByIpAndByName) {
  const http::Response by_ip = http::fetch(get(url("good", "/echo")), {}, trusting());
  EXPECT_EQ(by_ip.status, 200);
  EXPECT_NE(by_ip.body.find("sni=None\n"), std::string::npos) << "no SNI for an IP literal: " << by_ip.body;

  const http::Response by_name = http::fetch(get(url("good", "/echo", "localhost")), {}, trusting());
  EXPECT_EQ(by_name.status, 200);
  EXPECT_NE(by_name.body.find("sni=localhost\n"), std::string::npos) << by_name.body;
  EXPECT_EQ(by_name.url, url("good", "/echo", "localhost"));
}

TEST_F(HttpClient, ServerCertificateFromAnotherCaIsRefused) {
  EXPECT_FETCH_ERROR(get(url("other", "/hello")), {}, trusting(), Kind::Tls, "unable to get local issuer certificate");
  // The same server is fine for a client that trusts its CA: the refusal is the anchors' doing.
  EXPECT_EQ(http::fetch(get(url("other", "/hello")), {}, trusting("other-ca.pem")).status, 200);
}

TEST_F(HttpClient, CertificateForAnotherHostIsRefused) {
  EXPECT_FETCH_ERROR(get(url("wrongname", "/hello")), {}, trusting(), Kind::Tls, "IP address mismatch");
  EXPECT_FETCH_ERROR(get(url("wrongname", "/hello", "localhost")), {}, trusting(), Kind::Tls, "hostname mismatch");
}

TEST_F(HttpClient, HttpsWithoutTrustAnchorsIsRefused) {
  EXPECT_FETCH_ERROR(get(url("good", "/hello")), {}, {}, Kind::Tls, "no trust anchors configured");
  http::Tls missing;
  missing.trust_anchor_files = {file("no-such-ca.pem")};
  EXPECT_FETCH_ERROR(get(url("good", "/hello")), {}, missing, Kind::Tls, "no-such-ca.pem");
  http::Tls not_pem = trusting("certs.sh");
  EXPECT_FETCH_ERROR(get(url("good", "/hello")), {}, not_pem, Kind::Tls, "certs.sh");
}

TEST_F(HttpClient, ClientCertificateRequiredByTheServerIsPresented) {
  const ossl::Pkey key = read_key(file("client.key"));
  const ossl::X509Ptr cert = read_certificate(file("client.pem"));
  ASSERT_TRUE(key && cert);
  http::Tls tls = trusting();
  tls.client_key = key.get();
  tls.client_certificate = cert.get();
  const http::Response r = http::fetch(get(url("mtls", "/echo")), {}, tls);
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("client=client\n"), std::string::npos) << r.body;

  EXPECT_FETCH_ERROR(get(url("mtls", "/echo")), {}, trusting(), Kind::Tls, "certificate required");
}

TEST_F(HttpClient, ClientKeyThatDoesNotMatchTheCertificateIsRefused) {
  const ossl::Pkey key = read_key(file("server.key"));
  const ossl::X509Ptr cert = read_certificate(file("client.pem"));
  ASSERT_TRUE(key && cert);
  http::Tls tls = trusting();
  tls.client_key = key.get();
  tls.client_certificate = cert.get();
  EXPECT_FETCH_ERROR(get(url("mtls", "/echo")), {}, tls, Kind::Tls, "does not match");
  tls.client_key = nullptr;
  EXPECT_FETCH_ERROR(get(url("mtls", "/echo")), {}, tls, Kind::Tls, "needs both");
}

TEST_F(HttpClient, RedirectsAreFollowedUpToTheLimit) {
  // /chain/N redirects N + 1 times.
  const http::Response chain = http::fetch(get(url("plain", "/chain/2")), {}, {});
  EXPECT_EQ(chain.status, 200);
  EXPECT_EQ(chain.body, "hello firmad");
  EXPECT_EQ(chain.url, url("plain", "/hello"));

  const http::Response relative = http::fetch(get(url("plain", "/dir/rel")), {}, {});
  EXPECT_EQ(relative.body, "hello firmad");
  EXPECT_EQ(relative.url, url("plain", "/hello?from=rel"));

  EXPECT_FETCH_ERROR(get(url("plain", "/chain/3")), {}, {}, Kind::TooManyRedirects, "/chain/0");
  http::Limits none;
  none.max_redirects = 0;
  EXPECT_FETCH_ERROR(get(url("plain", "/chain/0")), none, {}, Kind::TooManyRedirects, "too many redirects");
}

TEST_F(HttpClient, RedirectLoopIsStopped) {
  const auto start = Clock::now();
  EXPECT_FETCH_ERROR(get(url("plain", "/loop")), {}, {}, Kind::TooManyRedirects, "/loop");
  EXPECT_LT(elapsed_ms(start), 5000);
}

TEST_F(HttpClient, SeeOtherBecomesGetWithoutBodyAndTemporaryRedirectKeepsPost) {
  http::Request post = get(url("plain", "/redirect?code=303&to=" + http::url_encode("/echo")));
  post.method = "POST";
  post.headers = {{"Content-Type", "text/plain"}};
  post.body = "renew me";
  const http::Response see_other = http::fetch(post, {}, {});
  EXPECT_NE(see_other.body.find("method=GET\n"), std::string::npos) << see_other.body;
  EXPECT_NE(see_other.body.find("content-length=None\n"), std::string::npos) << see_other.body;
  EXPECT_NE(see_other.body.find("content-type=None\n"), std::string::npos) << see_other.body;
  EXPECT_NE(see_other.body.find("body="), std::string::npos);
  EXPECT_EQ(see_other.body.substr(see_other.body.rfind("body=")), "body=");

  post.url = url("plain", "/redirect?code=307&to=" + http::url_encode("/echo"));
  const http::Response temporary = http::fetch(post, {}, {});
  EXPECT_NE(temporary.body.find("method=POST\n"), std::string::npos) << temporary.body;
  EXPECT_NE(temporary.body.find("body=renew me"), std::string::npos) << temporary.body;
}

TEST_F(HttpClient, CredentialsAreNotForwardedToAnotherOrigin) {
  http::Request request = get(url("plain", "/redirect?to=" + http::url_encode("/echo")));
  request.headers = {{"Authorization", "Bearer s3cret"}};
  EXPECT_NE(http::fetch(request, {}, {}).body.find("authorization=Bearer s3cret\n"), std::string::npos);

  request.url = url("plain", "/redirect?to=" + http::url_encode(url("plain", "/echo", "localhost")));
  const http::Response r = http::fetch(request, {}, {});
  EXPECT_NE(r.body.find("authorization=None\n"), std::string::npos) << r.body;
}

TEST_F(HttpClient, RedirectFromHttpToHttpsIsFollowedButNeverBack) {
  const http::Response up =
      http::fetch(get(url("plain", "/redirect?to=" + http::url_encode(url("good", "/hello")))), {}, trusting());
  EXPECT_EQ(up.status, 200);
  EXPECT_EQ(up.url, url("good", "/hello"));

  EXPECT_FETCH_ERROR(get(url("good", "/redirect?to=" + http::url_encode(url("plain", "/hello")))), {}, trusting(),
                     Kind::Tls, "refusing to downgrade");
}

TEST_F(HttpClient, BadRedirectLocationIsRefused) {
  EXPECT_FETCH_ERROR(get(url("plain", "/redirect?to=" + http::url_encode("ftp://127.0.0.1/file"))), {}, {},
                     Kind::BadUrl, "redirect from");
}

TEST_F(HttpClient, BodyOverTheLimitIsRefusedWithMemoryBounded) {
  http::Limits limits;
  limits.max_body = 1024 * 1024;
  limits.timeout = milliseconds(10000);
  EXPECT_EQ(http::fetch(get(url("plain", "/sized?n=1048576")), limits, {}).body.size(), 1048576u);
  EXPECT_EQ(http::fetch(get(url("plain", "/chunked?n=1000000")), limits, {}).body.size(), 1000000u);
  EXPECT_FETCH_ERROR(get(url("plain", "/sized?n=1048577")), limits, {}, Kind::TooLarge, "1048576 bytes");

  const bool measured = reset_peak_rss();
  const long before = peak_rss_kib();
  auto start = Clock::now();
  // Declares 10 GiB, then streams it.
  EXPECT_FETCH_ERROR(get(url("plain", "/big")), limits, {}, Kind::TooLarge, "larger than the limit");
  EXPECT_LT(elapsed_ms(start), 3000);
  start = Clock::now();
  // Chunked and endless: only the limit ends it, well before the timeout.
  EXPECT_FETCH_ERROR(get(url("plain", "/chunked")), limits, {}, Kind::TooLarge, "larger than the limit");
  EXPECT_LT(elapsed_ms(start), 5000);
  if (measured) {
    EXPECT_LT(peak_rss_kib() - before, 16 * 1024) << "peak RSS grew beyond the body limit";
  }
}

TEST_F(HttpClient, OversizeResponseHeaderIsRefused) {
  EXPECT_FETCH_ERROR(get(url("plain", "/bighead")), {}, {}, Kind::TooLarge, "response header");
}

TEST_F(HttpClient, ServerThatNeverAnswersTimesOutWithinTheLimit) {
  const Socket silent(true);
  http::Limits limits;
  limits.timeout = milliseconds(500);
  auto start = Clock::now();
  EXPECT_FETCH_ERROR(get("http://127.0.0.1:" + std::to_string(silent.port()) + "/"), limits, {}, Kind::Timeout,
                     "timeout of 500 ms");
  EXPECT_GE(elapsed_ms(start), 450);
  EXPECT_LT(elapsed_ms(start), 1500);

  // Over TLS the handshake is what hangs: the connect timeout ends it.
  limits.connect_timeout = milliseconds(300);
  limits.timeout = milliseconds(5000);
  start = Clock::now();
  EXPECT_FETCH_ERROR(get("https://127.0.0.1:" + std::to_string(silent.port()) + "/"), limits, trusting(),
                     Kind::Timeout, "connect timeout of 300 ms");
  EXPECT_GE(elapsed_ms(start), 250);
  EXPECT_LT(elapsed_ms(start), 1500);
}

TEST_F(HttpClient, ClosedPortIsUnreachable) {
  const Socket closed(false);
  EXPECT_FETCH_ERROR(get("http://127.0.0.1:" + std::to_string(closed.port()) + "/"), {}, {}, Kind::Unreachable,
                     "refused");
}

TEST_F(HttpClient, UnknownHostIsUnreachable) {
  http::Limits limits;
  limits.connect_timeout = milliseconds(5000);
  const auto error = fetch_error(get("http://no-such-host.invalid/"), limits, {});
  ASSERT_TRUE(error);
  if (error->kind() == Kind::Timeout) GTEST_SKIP() << "this machine's DNS does not answer: " << error->what();
  EXPECT_EQ(http::to_string(error->kind()), std::string("Unreachable")) << error->what();
  EXPECT_NE(std::string(error->what()).find("no-such-host.invalid"), std::string::npos) << error->what();
}

TEST_F(HttpClient, BadUrlsAreRefusedNamingTheUrl) {
  const std::vector<std::string> bad_urls = {
      "", "example.com/renew", "ftp://example.com/", "http://", "http:///path", "http://user@127.0.0.1/",
        "http://user:pw@example.com/", "http://127.0.0.1:0/", "http://127.0.0.1:65536/", "http://127.0.0.1:/",
        "http://127.0.0.1:8o/", "http://[::1/", "http://::1/", "http://[::1]x/", "http://[fe80::1%25eth0]/",
        "http://256.1.1.1/", "http://127.1/", "http://0x7f.1/", "http://-bad-.example/", "http://a..b/",
        "http://exa mple.com/", "http://example.com/a b", "http://ex\x01.com/", "http://exämple.com/",
        "https://example.com/\r\nX-Injected: 1", "http://" + std::string(300, 'a') + ".com/",
        "http://example.com/" + std::string(9000, 'p')};
  for (const std::string& bad : bad_urls) {
    SCOPED_TRACE(bad.substr(0, 80));
    EXPECT_FETCH_ERROR(get(bad), {}, {}, Kind::BadUrl, "bad URL '" + bad.substr(0, 20));
  }
  // Scheme and host are case-insensitive, the fragment is not sent, IPv6 literals are bracketed.
  const std::string port = std::to_string(servers_->ports.at("plain"));
  const http::Response r = http::fetch(get("HTTP://LocalHost:" + port + "/echo#fragment"), {}, {});
  EXPECT_NE(r.body.find("target=/echo\n"), std::string::npos) << r.body;
  EXPECT_FETCH_ERROR(get("http://[::1]:" + port + "/"), {}, {}, Kind::Unreachable, "[::1]");
}

TEST_F(HttpClient, InvalidRequestMethodOrHeaderIsRefused) {
  http::Request request = get(url("plain", "/echo"));
  request.method = "GET /x HTTP/1.1\r\n";
  EXPECT_FETCH_ERROR(request, {}, {}, Kind::Protocol, "invalid request method");
  request.method = "GET";
  request.headers = {{"X-Note", "a\r\nInjected: yes"}};
  EXPECT_FETCH_ERROR(request, {}, {}, Kind::Protocol, "CR, LF or NUL");
  request.headers = {{"Content-Length", "5"}};
  EXPECT_FETCH_ERROR(request, {}, {}, Kind::Protocol, "set by firmad");
}

}  // namespace
