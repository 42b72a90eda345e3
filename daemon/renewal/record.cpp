// A renewal's record in state.json and its events, to and from JSON.
#include "daemon/renewal/record.hpp"

#include <stdexcept>

#include "daemon/mx/identity.hpp"
#include "protocol/base64.hpp"

namespace firmad::renewal {
namespace {

std::string b64(const Bytes& b) { return protocol::base64_encode(b); }

Bytes unb64(const Json& j, const char* name) {
  if (!j.contains(name)) return {};
  auto v = protocol::base64_decode(j.at(name).get<std::string>());
  if (!v) throw std::runtime_error(std::string("bad base64 in ") + name);
  return *v;
}

std::string name(auto value) { return std::string(protocol::wire_name(value)); }

}  // namespace

std::time_t now_s() { return std::time(nullptr); }

std::string printable(std::string_view text, std::size_t max) {
  std::string out;
  for (char c : text.substr(0, max)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return out;
}

std::string hex(const Bytes& b) { return protocol::hex_encode(b); }

Bytes unhex(const std::string& s) {
  Bytes out;
  for (std::size_t i = 0; i + 1 < s.size(); i += 2) out.push_back(static_cast<std::uint8_t>(std::stoi(s.substr(i, 2), nullptr, 16)));
  return out;
}

bool Record::terminal() const {
  return failure == Failure::Rejected || failure == Failure::VerificationFailed || failure == Failure::Underconfigured;
}

std::string Record::state() const { return failure ? name(*failure) : name(step); }

Bytes Record::abandoned_key() const {
  return new_key && !new_id.empty() && new_id != old_id && step != Step::Installed && !done() ? new_id : Bytes{};
}

Json Record::to_json() const {
  Json j = {{"step", name(step)},       {"origin", name(origin)},   {"newKey", new_key},   {"keyType", key_type},
            {"oldId", hex(old_id)}, {"newId", hex(new_id)}, {"oldSpki", b64(old_spki)}, {"spki", b64(spki)},
            {"oldCertificate", b64(old_certificate)}, {"forSerial", for_serial}, {"csr", b64(csr)},
            {"acceptance", b64(acceptance)}, {"ticket", ticket}, {"attempts", attempts}, {"started", started},
            {"updated", updated}, {"nextTry", next_try}, {"cleanupId", hex(cleanup_id)}};
  if (failure) j["failure"] = name(*failure);
  if (submitting) j["submitting"] = true;
  if (files_written) j["filesWritten"] = true;
  if (post_install_started) j["postInstallStarted"] = true;
  if (files_blocked) j["filesBlocked"] = true;
  if (!reason.empty()) j["reason"] = reason;
  j["issued"] = Json::array();
  for (const auto& c : issued) j["issued"].push_back(b64(c));
  j["chain"] = Json::array();
  for (const auto& c : chain) j["chain"].push_back(b64(c));
  return j;
}

Record Record::from_json(const Json& j) {
  Record r;
  const std::string step = j.at("step").get<std::string>();
  const std::string failure = j.value("failure", "");
  r.reason = j.value("reason", "");
  // Names this firmad does not know (a newer one wrote them, or a hand edit)
  // keep the record and stop it for an administrator, saying which.
  if (failure.empty()) {
    r.failure.reset();
  } else if (auto f = protocol::renewal_failure_named(failure)) {
    r.failure = *f;
  } else {
    r.failure = Failure::Underconfigured;
    r.reason = "unknown renewal failure '" + failure + "' in the state file";
  }
  if (auto s = protocol::renewal_step_named(step)) {
    r.step = *s;
  } else {
    r.failure = Failure::Underconfigured;
    r.reason = "unknown renewal step '" + step + "' in the state file";
  }
  r.origin = protocol::renewal_origin_named(j.value("origin", "")).value_or(Origin::Manual);
  r.new_key = j.value("newKey", true);
  r.key_type = j.value("keyType", "");
  r.old_id = unhex(j.value("oldId", ""));
  r.new_id = unhex(j.value("newId", ""));
  r.cleanup_id = unhex(j.value("cleanupId", ""));
  r.old_spki = unb64(j, "oldSpki");
  r.spki = unb64(j, "spki");
  r.old_certificate = unb64(j, "oldCertificate");
  r.for_serial = j.value("forSerial", "");
  r.csr = unb64(j, "csr");
  r.acceptance = unb64(j, "acceptance");
  r.ticket = j.value("ticket", "");
  r.submitting = j.value("submitting", false);
  r.files_written = j.value("filesWritten", false);
  r.post_install_started = j.value("postInstallStarted", false);
  r.files_blocked = j.value("filesBlocked", false);
  auto certificates = [&j](const char* field) {
    std::vector<Bytes> out;
    for (const auto& c : j.value(field, Json::array())) {
      auto der = protocol::base64_decode(c.get<std::string>());
      if (!der) throw std::runtime_error(std::string("bad base64 in ") + field);
      out.push_back(std::move(*der));
    }
    return out;
  };
  r.issued = certificates("issued");
  r.chain = certificates("chain");
  r.attempts = j.value("attempts", 0u);
  r.started = j.value("started", std::time_t{0});
  r.updated = j.value("updated", std::time_t{0});
  r.next_try = j.value("nextTry", std::time_t{0});
  return r;
}

Json Event::to_json() const {
  Json j = {{"key", key},         {"state", state},         {"step", step ? name(*step) : std::string()},
            {"message", message}, {"at", iso8601(at)}, {"final", final}};
  if (failure) j["failure"] = name(*failure);
  if (next_try) j["nextTry"] = iso8601(next_try);
  return j;
}

}  // namespace firmad::renewal
