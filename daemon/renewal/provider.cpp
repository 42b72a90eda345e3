// The three providers: each turns a CA's answers (HTTP statuses, bodies, helper exit codes) into an Outcome.
#include "daemon/renewal/provider.hpp"

#include <algorithm>
#include <charconv>
#include <map>
#include <optional>

#include "daemon/renewal/http_client.hpp"
#include "daemon/renewal/crypto.hpp"
#include "daemon/renewal/subprocess.hpp"
#include "protocol/base64.hpp"

namespace firmad::renewal {

namespace {

using Kind = Outcome::Kind;
using std::chrono::seconds;

constexpr seconds kMaxRetryHint{86400};
// An IDSE answer has a handful of fields; the rest of a longer one is ignored.
constexpr std::size_t kMaxIdseFields = 32;

std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return {};
  const auto e = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(b, e - b + 1));
}

// A short, printable excerpt of what a server or helper said, for reasons and logs.
std::string excerpt(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 200)) out += (c >= 0x20 && c < 0x7f) ? c : ' ';
  return trim(out);
}

std::string replace(std::string text, std::string_view placeholder, const std::string& value) {
  if (auto at = text.find(placeholder); at != std::string::npos) text.replace(at, placeholder.size(), value);
  return text;
}

http::Limits limits_of(const RenewalConfig& c) {
  http::Limits l;
  l.connect_timeout = c.connect_timeout;
  l.timeout = c.timeout;
  l.max_body = c.max_response_bytes;
  l.max_redirects = c.max_redirects;
  return l;
}

// One HTTP exchange; transport failures become Unreachable (or Underconfigured for a bad URL).
struct Exchange {
  std::optional<http::Response> response;
  Outcome failure;
};

Exchange exchange(const RenewalConfig& c, http::Request req, EVP_PKEY* client_key = nullptr, X509* client_cert = nullptr) {
  http::Tls tls;
  tls.trust_anchor_files = c.trust_anchors;
  tls.client_key = client_key;
  tls.client_certificate = client_cert;
  try {
    return {http::fetch(req, limits_of(c), tls), {}};
  } catch (const http::Error& e) {
    const Kind kind = e.kind() == http::Error::Kind::BadUrl ? Kind::Underconfigured : Kind::Unreachable;
    return {std::nullopt, Outcome::failed(kind, e.what())};
  }
}

seconds retry_after(const http::Response& r) {
  auto it = r.headers.find("retry-after");
  return it == r.headers.end() ? seconds(0) : retry_after_seconds(it->second);
}

// Status classes every provider treats alike.
std::optional<Outcome> common_failure(const http::Response& r) {
  if (r.status >= 500)
    return Outcome::failed(Kind::Unreachable, "HTTP " + std::to_string(r.status) + " from " + r.url + ": " + excerpt(r.body),
                           retry_after(r));
  if (r.status >= 300 && r.status < 400)
    return Outcome::failed(Kind::Unreachable, "HTTP " + std::to_string(r.status) + " from " + r.url + " (redirect not followed)");
  return std::nullopt;
}

Outcome issued_from(std::string_view body, const std::string& origin) {
  try {
    return Outcome::issued(certificates_from(body));
  } catch (const VerificationError& e) {
    return Outcome::failed(Kind::Invalid, std::string("invalid answer from ") + origin + ": " + e.what());
  }
}

class Idse final : public Provider {
 public:
  explicit Idse(RenewalConfig c) : c_(std::move(c)) {}

  Outcome submit(const Submission& s) override {
    http::Request req;
    req.method = "POST";
    req.url = c_.url + c_.submit_path;
    req.headers = {{"Content-Type", "application/x-www-form-urlencoded"}};
    req.body = http::form_encode({{"NPIE", s.npie},
                                  {"CSR", protocol::base64_encode(s.csr)},
                                  {"ACEPTACION", protocol::base64_encode(s.acceptance)}});
    auto x = exchange(c_, std::move(req));
    if (!x.response) return x.failure;
    const auto& r = *x.response;
    if (auto f = common_failure(r)) return *f;
    auto fields = idse_fields(r.body);
    if (r.status != 200) {
      const std::string why = fields.count("ERROR") ? fields["ERROR"] : excerpt(r.body);
      return Outcome::failed(Kind::Rejected, "the CA refused the request (HTTP " + std::to_string(r.status) + "): " + why);
    }
    const std::string state = fields["ESTADO"], serial = fields["SERIAL_NOM"];
    if (state == "RECHAZADO")
      return Outcome::failed(Kind::Rejected, "the CA rejected the request: " + (fields.count("MOTIVO") ? fields["MOTIVO"] : "no reason given"));
    if ((state == "EMITIDO" || state == "PENDIENTE") && !serial.empty()) {
      if (state == "PENDIENTE") return Outcome::pending(serial, retry_after_seconds(fields["REINTENTAR"]));
      // Issued: the serial is recorded before the download (poll) asks for
      // it, so a crash in between never sends the request again.
      return Outcome::accepted(serial);
    }
    // A named failure, not a retry without end: an answer firmad cannot read
    // will not read better next time (firmad.toml(5) lists what it reads).
    return Outcome::failed(Kind::Invalid, "the CA's answer to the request is not understood: " + excerpt(r.body));
  }

  Outcome poll(const Submission&, const std::string& serial) override { return idse_fetch(c_, serial); }

 private:
  RenewalConfig c_;
};

class Helper final : public Provider {
 public:
  explicit Helper(RenewalConfig c) : c_(std::move(c)) {}

  Outcome submit(const Submission& s) override { return run("SUBMIT", s, ""); }
  Outcome poll(const Submission& s, const std::string& cookie) override { return run("POLL", s, cookie); }

 private:
  Outcome run(const char* operation, const Submission& s, const std::string& cookie) {
    std::vector<std::string> env = {std::string("CERTMONGER_OPERATION=") + operation,
                                    "CERTMONGER_CSR=" + to_pem(s.csr, "CERTIFICATE REQUEST"),
                                    "PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C"};
    if (!s.current_certificate.empty()) env.push_back("CERTMONGER_CERTIFICATE=" + to_pem(s.current_certificate));
    if (!cookie.empty()) env.push_back("CERTMONGER_CA_COOKIE=" + cookie);
    ProgramResult r;
    try {
      r = run_program(c_.command, env, c_.helper_timeout, c_.helper_max_output);
    } catch (const std::exception& e) {
      return Outcome::failed(Kind::Underconfigured, e.what());
    }
    const std::string who = "helper " + c_.command.front();
    if (!r.exited_normally())
      return Outcome::failed(Kind::Unreachable, who + " " + r.describe(c_.helper_timeout, c_.helper_max_output));
    const std::string said = excerpt(r.output.empty() ? r.errors : r.output);
    switch (r.exit_code) {
      case 0: return issued_from(r.output, who);
      case 1: return Outcome::pending(trim(r.output), seconds(0), who + " asked to wait");
      case 2: return Outcome::failed(Kind::Rejected, who + " reports the CA rejected the request: " + said);
      case 3: return Outcome::failed(Kind::Unreachable, who + " could not reach the CA: " + said);
      case 4: return Outcome::failed(Kind::Underconfigured, who + " is not configured: " + said);
      case 5: {
        const auto nl = r.output.find('\n');
        const seconds after = retry_after_seconds(r.output.substr(0, nl));
        const std::string next = nl == std::string::npos ? cookie : trim(r.output.substr(nl + 1));
        return Outcome::pending(next.empty() ? cookie : next, after, who + " asked to retry in " + std::to_string(after.count()) + " s");
      }
      case 6: return Outcome::failed(Kind::Underconfigured, who + " does not support " + operation);
      default: return Outcome::failed(Kind::Unreachable, who + " exited with status " + std::to_string(r.exit_code) + ": " + said);
    }
  }

  RenewalConfig c_;
};

class Est final : public Provider {
 public:
  explicit Est(RenewalConfig c) : c_(std::move(c)) {}

  Outcome submit(const Submission& s) override {
    if (auto failed = fetch_cacerts()) return *failed;
    return enroll(s);
  }

  // RFC 7030 §4.2.3: after a 202 the client sends the same request again
  // (with the CA's certificates fetched again: the provider is made afresh
  // for every attempt, and after a restart).
  Outcome poll(const Submission& s, const std::string&) override { return submit(s); }

 private:
  // The CA's certificates: candidates for the chain (never trusted by themselves).
  std::optional<Outcome> fetch_cacerts() {
    http::Request ca;
    ca.url = c_.url + "/cacerts";
    auto x = exchange(c_, ca);
    if (!x.response) return x.failure;
    if (auto f = common_failure(*x.response)) return *f;
    if (x.response->status != 200)
      return Outcome::failed(Kind::Rejected, "HTTP " + std::to_string(x.response->status) + " from " + ca.url);
    try {
      cacerts_ = certificates_from(x.response->body);
    } catch (const VerificationError& e) {
      return Outcome::failed(Kind::Invalid, "invalid answer from " + ca.url + ": " + e.what());
    }
    return std::nullopt;
  }

  Outcome enroll(const Submission& s) {
    http::Request req;
    req.method = "POST";
    req.url = c_.url + "/simplereenroll";
    req.headers = {{"Content-Type", "application/pkcs10"}, {"Content-Transfer-Encoding", "base64"}};
    const std::string b64 = protocol::base64_encode(s.csr);
    for (std::size_t i = 0; i < b64.size(); i += 64) req.body += b64.substr(i, 64) + "\r\n";
    auto x = exchange(c_, std::move(req), s.client_key, s.client_certificate);
    if (!x.response) return x.failure;
    const auto& r = *x.response;
    if (auto f = common_failure(r)) return *f;
    if (r.status == 202) return Outcome::pending("est", retry_after(r));
    if (r.status != 200)
      return Outcome::failed(Kind::Rejected, "the EST server refused the request (HTTP " + std::to_string(r.status) + "): " + excerpt(r.body));
    Outcome o = issued_from(r.body, r.url);
    if (o.kind == Kind::Issued) o.certificates.insert(o.certificates.end(), cacerts_.begin(), cacerts_.end());
    return o;
  }

  RenewalConfig c_;
  std::vector<Bytes> cacerts_;
};

}  // namespace

std::map<std::string, std::string> idse_fields(std::string_view body) {
  std::map<std::string, std::string> out;
  std::size_t pos = 0;
  while (pos < body.size() && out.size() < kMaxIdseFields) {
    std::size_t end = body.find('\n', pos);
    if (end == std::string_view::npos) end = body.size();
    const std::string line = trim(body.substr(pos, end - pos));
    if (auto eq = line.find('='); eq != std::string::npos && eq > 0) out[line.substr(0, eq)] = line.substr(eq + 1);
    pos = end + 1;
  }
  return out;
}

seconds retry_after_seconds(std::string_view value) {
  const std::size_t b = value.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return seconds(0);
  const std::string_view t = value.substr(b, value.find_last_not_of(" \t\r\n") - b + 1);
  if (!std::all_of(t.begin(), t.end(), [](char c) { return c >= '0' && c <= '9'; })) return seconds(0);
  long long v = 0;
  // All digits: the only failure left is a number too large, which is
  // "much later" and gets the cap, not "no hint".
  if (std::from_chars(t.data(), t.data() + t.size(), v).ec != std::errc()) return kMaxRetryHint;
  return std::min(seconds(v), kMaxRetryHint);
}

std::unique_ptr<Provider> make_provider(const RenewalConfig& config) {
  switch (config.provider) {
    case RenewalProvider::Idse: return std::make_unique<Idse>(config);
    case RenewalProvider::Helper: return std::make_unique<Helper>(config);
    case RenewalProvider::Est: return std::make_unique<Est>(config);
  }
  return nullptr;
}

Outcome idse_lookup_serial(const RenewalConfig& c, const std::string& npie) {
  http::Request req;
  req.url = c.url + replace(c.lookup_path, "{npie}", http::url_encode(npie));
  auto x = exchange(c, std::move(req));
  if (!x.response) return x.failure;
  const auto& r = *x.response;
  if (auto f = common_failure(r)) return *f;
  if (r.status == 404) return Outcome::failed(Kind::Rejected, "the CA has no certificate issued for NPIE " + npie);
  auto fields = idse_fields(r.body);
  if (r.status != 200)
    return Outcome::failed(Kind::Unreachable, "HTTP " + std::to_string(r.status) + " from the CA's serial lookup: " +
                                                  excerpt(r.body));
  if (fields["SERIAL_NOM"].empty())
    return Outcome::failed(Kind::Invalid, "the CA's answer to the serial lookup is not understood: " + excerpt(r.body));
  return Outcome::pending(fields["SERIAL_NOM"], seconds(0), "serial found");
}

Outcome idse_fetch(const RenewalConfig& c, const std::string& serial) {
  http::Request req;
  req.url = c.url + replace(c.fetch_path, "{serial}", http::url_encode(serial));
  auto x = exchange(c, std::move(req));
  if (!x.response) return x.failure;
  const auto& r = *x.response;
  if (auto f = common_failure(r)) return *f;
  if (r.status == 202) return Outcome::pending(serial, retry_after(r));
  if (r.status == 404) return Outcome::failed(Kind::Rejected, "the CA knows no certificate with serial " + serial);
  if (r.status >= 400)
    return Outcome::failed(Kind::Rejected, "the CA refused the download (HTTP " + std::to_string(r.status) + "): " + excerpt(r.body));
  if (r.status != 200)
    return Outcome::failed(Kind::Unreachable, "HTTP " + std::to_string(r.status) + " from " + r.url + ": " + excerpt(r.body));
  return issued_from(r.body, r.url);
}

}  // namespace firmad::renewal
