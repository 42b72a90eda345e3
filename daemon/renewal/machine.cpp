// The renewal state machine: the steps, what each persists before the next begins, and their failures.
//
// Each step is safe to run again after a crash: it finds what a crashed run
// left (a key pair, a certificate already written) and goes on from there.
// What a step does to the token is in token_steps.cpp, what it does outside
// it in install_steps.cpp.
#include <openssl/x509.h>
#include <unistd.h>

#include "daemon/log.hpp"
#include "daemon/mx/identity.hpp"
#include "daemon/renewal/crypto.hpp"
#include "daemon/renewal/install_steps.hpp"
#include "daemon/renewal/manager.hpp"
#include "daemon/renewal/schedule.hpp"
#include "daemon/renewal/token_steps.hpp"
#include "daemon/test_hooks.hpp"
#include "daemon/token/signing.hpp"
#include "pkcs11/keygen.hpp"
#include "protocol/errors.hpp"

namespace firmad::renewal {

namespace perr = protocol::error;
using protocol::VarlinkError;
using Kind = Outcome::Kind;

namespace {

ossl::X509Ptr x509_of(const Bytes& der) {
  const unsigned char* p = der.data();
  return ossl::X509Ptr(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
}

// A failure a step reports by throwing.
struct StepFailure {
  Failure failure;
  std::string reason;
};

// Token trouble found inside an OpenSSL callback comes back as a generic
// failure: look first, so absent and not-logged-in keep their names.
void require_token(const TokenWorker& w) {
  const auto snap = w.snapshot();
  if (!snap->present) throw StepFailure{Failure::TokenAbsent, "the token is not present"};
  if (!snap->logged_in)
    throw StepFailure{Failure::NeedsPin, "the token is not logged in: 'firmactl login " + w.config().name + "'"};
}

// Names what went wrong with the token for the record.
StepFailure token_problem(const std::exception& e) {
  if (auto* v = dynamic_cast<const VarlinkError*>(&e)) {
    if (v->name() == perr::kTokenAbsent) return {Failure::TokenAbsent, "the token is not present"};
    if (v->name() == perr::kNotLoggedIn || v->name() == perr::kPinSourceUnavailable)
      return {Failure::NeedsPin, "the token is not logged in: 'firmactl login' it"};
    return {Failure::TokenError, std::string(v->name()) + " " + v->parameters().dump()};
  }
  return {Failure::TokenError, e.what()};
}

// The serial of a certificate the CA already issued for the renewal's new
// key (after a submission whose answer was never recorded), or nullopt when
// the CA has none for it. Throws StepFailure when the CA cannot be asked now.
std::optional<std::string> issued_before(const Record& r, const RenewalConfig& config, const std::string& npie) {
  // Until the CA has answered both questions, nothing is sent again.
  auto cannot_tell = [](const Outcome& o) -> StepFailure {
    const std::string why = "cannot ask the CA whether it has the request already: " + o.reason;
    if (o.kind == Kind::Invalid) return {Failure::VerificationFailed, why};
    if (o.kind == Kind::Underconfigured) return {Failure::Underconfigured, why};
    return {Failure::CaUnreachable, why};
  };
  const Outcome found = idse_lookup_serial(config, npie);
  if (found.kind == Kind::Rejected) return std::nullopt;  // none issued for the NPIE
  if (found.kind != Kind::Pending) throw cannot_tell(found);
  if (found.ticket.empty() || found.ticket.size() > 512 || printable(found.ticket, 512) != found.ticket)
    throw StepFailure{Failure::VerificationFailed, "the CA's serial for NPIE " + npie + " is not printable text"};
  const Outcome fetched = idse_fetch(config, found.ticket);
  if (fetched.kind == Kind::Rejected || fetched.kind == Kind::Invalid) return std::nullopt;  // not ours to take
  if (fetched.kind != Kind::Issued || fetched.certificates.empty()) throw cannot_tell(fetched);  // not yet, or no answer
  try {
    if (public_key_of(fetched.certificates.front()) == r.spki) return found.ticket;
  } catch (const VerificationError&) {
  }
  return std::nullopt;
}

}  // namespace

void Manager::fail(Record& r, Failure failure, const std::string& reason, const Target& t) {
  r.failure = failure;
  r.reason = printable(reason);
  if (!r.terminal()) {
    ++r.attempts;
    r.next_try = now_s() + retry_delay(r.attempts, t.config, random_unit()).count();
  }
}

void Manager::advance(const std::string& alias) {
  Record r;
  {
    std::lock_guard lock(mutex_);
    r = records_[alias];
  }
  auto t = target(alias);
  if (!t || !t->key.renewal) {
    r.failure = Failure::Underconfigured, r.reason = "the key or its [keys." + alias + ".renewal] table is no longer configured";
    persist_or_keep(alias, r, r.reason);
    return;
  }
  if (r.step == Step::Started) {
    r.failure.reset(), r.reason.clear();
    try {
      persist(alias, r, "renewal started (" + std::string(protocol::wire_name(r.origin)) + ")");
    } catch (const StateError& e) {
      fail(r, Failure::TokenError, std::string("cannot record the renewal: ") + e.what(), *t);
      persist_or_keep(alias, r, r.reason);
      return;
    }
  }
  while (!stopping_) {
    const Step before = r.step;
    r.failure.reset();
    try {
      // A key cancelled while its renewal runs signs nothing more, here too.
      if (t->worker->cancellation(alias)) throw StepFailure{Failure::Underconfigured, "the key was cancelled"};
      step(r, *t);
    } catch (const StepFailure& f) {
      fail(r, f.failure, f.reason, *t);
    } catch (const VerificationError& e) {
      fail(r, Failure::VerificationFailed, e.what(), *t);
    } catch (const StateError& e) {
      // What was not recorded did not happen: go on from the last record.
      log::error("renewal-state-unwritable", {{"key", alias}, {"error", e.what()}});
      {
        std::lock_guard lock(mutex_);
        r = records_[alias];
      }
      fail(r, Failure::TokenError, std::string("cannot record the renewal: ") + e.what(), *t);
    } catch (const std::exception& e) {
      const StepFailure f = token_problem(e);
      fail(r, f.failure, f.reason, *t);
    }
    if (r.failure) {
      persist_or_keep(alias, r, r.reason);
      return;
    }
    if (r.step == before) return;  // the step persisted its own resting state
    if (r.done() || r.step == Step::Waiting) return;
    auto fresh = target(alias);  // installs change what the worker serves
    if (fresh) t = std::move(fresh);
  }
}

void Manager::step(Record& r, Target& t) {
  switch (r.step) {
    case Step::Started: return begin(r, t);
    case Step::KeyPending: return make_key(r, t);
    case Step::KeyReady: return build_request(r, t);
    case Step::Submitted:
      if (!r.issued.empty()) return settle(r, Outcome::issued(r.issued), t);  // received before a crash
      return submit(r, t);
    case Step::RequestBuilt:
    case Step::Waiting: return submit(r, t);
    case Step::Fetching: return fetch_by_serial(r, t);
    case Step::Issued: return verify(r, t);
    case Step::Verified: return install(r, t);
    case Step::Installed: return retire(r, t);
    case Step::Retired: return;
  }
}

void Manager::begin(Record& r, Target& t) {
  const TokenSnapshot& snap = *t.snapshot;
  if (!snap.present) throw StepFailure{Failure::TokenAbsent, "the token is not present"};
  if (!snap.logged_in) throw StepFailure{Failure::NeedsPin, "the token is not logged in: 'firmactl login " + t.key.token + "'"};
  if (!t.state || !t.state->info) throw StepFailure{Failure::Underconfigured, "the key is not on the token (" + t.key.uri + ")"};
  if (t.worker->cancellation(t.key.alias)) throw StepFailure{Failure::Underconfigured, "the key was cancelled"};
  const pkcs11::KeyInfo& info = *t.state->info;
  r.old_id = info.id;
  r.old_spki = info.public_key;
  r.old_certificate = info.certificate;
  r.for_serial = t.state->certificate ? t.state->certificate->serial_hex : "";
  if (t.config.provider == RenewalProvider::Idse && t.key.npie.empty())
    throw StepFailure{Failure::Underconfigured, "the idse provider needs the key's npie in firmad.toml"};
  if (r.old_certificate.empty() && (t.config.provider != RenewalProvider::Helper || t.config.subject.empty()))
    throw StepFailure{Failure::Underconfigured, "the key has no certificate on the token to renew"};
  r.key_type = t.config.key_type.empty() ? key_type_of(info) : t.config.key_type;
  if (!pkcs11::parse_key_spec(r.key_type))
    throw StepFailure{Failure::Underconfigured, "renewal needs an RSA or ECDSA P-256/P-384 key; this one is " + std::string(pkcs11::to_string(info.type))};
  if (r.old_id.empty()) throw StepFailure{Failure::Underconfigured, "the key has no CKA_ID to tie a certificate to"};
  const Bytes cleanup = r.cleanup_id;
  if (!cleanup.empty() && cleanup != r.old_id) destroy_key(*t.worker, cleanup);
  r.cleanup_id.clear();
  if (!t.config.new_key) {
    r.new_key = false;
    r.new_id = r.old_id;
    r.spki = r.old_spki;
    r.step = Step::KeyReady;
    persist(t.key.alias, r, "reusing the current key (CKA_ID " + hex(r.old_id) + ")");
    return;
  }
  r.new_key = true;
  const Bytes id = choose_key_id(*t.worker);
  // A token that would refuse the new key's objects (a PIV card's module
  // writes only for its security officer) is known before anything changes.
  if (!r.old_certificate.empty()) {
    if (auto why = refuses_key_writes(*t.worker, id, r.old_certificate))
      throw StepFailure{Failure::Underconfigured, *why + "; renew with key = \"reuse\""};
  }
  r.new_id = id;
  r.step = Step::KeyPending;
  persist(t.key.alias, r, "generating a new " + r.key_type + " key on the token (CKA_ID " + hex(r.new_id) + ")");
}

void Manager::make_key(Record& r, Target& t) {
  require_token(*t.worker);
  const auto spec = pkcs11::parse_key_spec(r.key_type);
  if (!spec) throw StepFailure{Failure::Underconfigured, "unknown key type '" + r.key_type + "'"};
  const std::string label = t.key.alias + ".renewal";
  r.spki = make_key_pair(*t.worker, r.new_id, *spec, label);
  r.step = Step::KeyReady;
  persist(t.key.alias, r, "new " + r.key_type + " key generated on the token; it never leaves it");
}

void Manager::audit_signature(const std::string& alias, const char* what, const Bytes& id) {
  if (!audit_) return;
  AuditRecord rec;
  rec.event = "sign";
  rec.method = what;
  rec.add("key", alias);
  rec.add("keyId", hex(id));
  rec.uid = ::getuid(), rec.gid = ::getgid(), rec.pid = ::getpid(), rec.program = {"program", "firmad-renewal"};
  rec.result = "ok";
  audit_->record(std::move(rec));
}

void Manager::build_request(Record& r, Target& t) {
  require_token(*t.worker);
  const Bytes subject = t.config.subject.empty() ? certificate_subject(r.old_certificate) : parse_subject(t.config.subject);
  {
    auto key = token_backed_key(*t.worker, r.new_id, r.spki);
    r.csr = build_csr(r.spki, subject, key.get());
  }
  audit_signature(t.key.alias, "renewal-csr", r.new_id);
  if (t.config.provider == RenewalProvider::Idse) {
    // Signed with the current key, expired or not: the one such signature.
    auto current = token_backed_key(*t.worker, r.old_id, r.old_spki);
    r.acceptance = sign_acceptance(t.config.acceptance_text, r.old_certificate, current.get());
    audit_signature(t.key.alias, "renewal-acceptance", r.old_id);
  }
  r.step = Step::RequestBuilt;
  persist(t.key.alias, r,
          t.config.provider == RenewalProvider::Idse ? "request and acceptance of terms signed on the token"
                                                     : "certificate request signed on the token");
}

void Manager::submit(Record& r, Target& t) {
  Submission s;
  s.key = t.key.alias;
  s.npie = t.key.npie;
  s.csr = r.csr;
  s.acceptance = r.acceptance;
  s.current_certificate = r.old_certificate;
  ossl::Pkey client_key;
  ossl::X509Ptr client_cert;
  if (t.config.provider == RenewalProvider::Est) {
    client_key = token_backed_key(*t.worker, r.old_id, r.old_spki);
    client_cert = x509_of(r.old_certificate);
    s.client_key = client_key.get();
    s.client_certificate = client_cert.get();
  }
  if (client_key) require_token(*t.worker);
  auto provider = make_provider(t.config);
  const bool first = r.step == Step::RequestBuilt;
  if (first && t.config.provider == RenewalProvider::Idse) {
    // A submission the CA may have received before firmad stopped: ask the
    // CA for the certificate of this key before asking for another one. Only
    // a new key tells this renewal's certificate apart (a reused key's
    // earlier certificates carry the same public key): a reused key's
    // request is sent again.
    if (r.submitting && r.new_key) {
      if (auto serial = issued_before(r, t.config, t.key.npie)) {
        r.step = Step::Submitted;
        r.ticket = *serial;
        r.submitting = false;
        persist(t.key.alias, r, "the CA had issued the request already (" + r.ticket + ")");
        return settle(r, idse_fetch(t.config, r.ticket), t);
      }
    }
    r.submitting = true;
    persist(t.key.alias, r, "sending the request to the CA");
  }
  const Outcome o = first ? provider->submit(s) : provider->poll(s, r.ticket);
  if (o.kind == Kind::Accepted && !o.ticket.empty() && o.ticket.size() <= 512 && printable(o.ticket, 512) == o.ticket) {
    // Each answer is recorded before the next request: a crash during the
    // download resumes by this ticket and never submits again.
    r.step = Step::Submitted;
    r.ticket = o.ticket;
    r.submitting = false;
    persist(t.key.alias, r, "request accepted by the CA (" + r.ticket + ")");
    Outcome fetched = provider->poll(s, r.ticket);
    if (fetched.kind == Kind::Unreachable)
      fetched = Outcome::pending(r.ticket, fetched.retry_after, "issued; download failed (" + fetched.reason + ")");
    return settle(r, fetched, t);
  }
  if (first && (o.kind == Kind::Issued || o.kind == Kind::Pending)) {
    r.step = Step::Submitted;
    r.submitting = false;
    if (!o.ticket.empty() && printable(o.ticket, 512) == o.ticket) r.ticket = o.ticket;
    if (o.kind == Kind::Issued) r.issued = o.certificates;  // a crash before "issued" keeps them
    persist(t.key.alias, r, "request accepted by the CA" + (r.ticket.empty() ? std::string() : " (" + r.ticket + ")"));
  }
  settle(r, o, t);
}

// What the CA's answer means for the record.
void Manager::settle(Record& r, const Outcome& o, const Target& t) {
  if (o.ticket.size() > 512 || printable(o.ticket, 512) != o.ticket)
    return fail(r, Failure::CaUnreachable, "the CA's handle on the request is not printable text; not kept", t);
  switch (o.kind) {
    case Kind::Issued:
      if (!o.ticket.empty()) r.ticket = o.ticket;
      r.issued = o.certificates;
      r.attempts = 0;
      r.next_try = 0;
      r.step = Step::Issued;
      if (auto id = r.issued.empty() ? std::nullopt : identify_certificate(r.issued.front()))
        persist(t.key.alias, r, "certificate issued (serial " + id->serial_hex + ")");
      else
        persist(t.key.alias, r, "certificate received");
      return;
    case Kind::Pending: {
      if (!o.ticket.empty()) r.ticket = o.ticket;
      ++r.attempts;
      const auto delay = o.retry_after.count() > 0 ? o.retry_after : retry_delay(r.attempts, t.config, random_unit());
      r.next_try = now_s() + delay.count();
      if (r.step != Step::Fetching) r.step = Step::Waiting;
      persist(t.key.alias, r, o.reason + "; next try at " + iso8601(r.next_try));
      return;
    }
    case Kind::Unreachable:
      if (!o.ticket.empty()) r.ticket = o.ticket;
      fail(r, Failure::CaUnreachable, o.reason, t);
      if (o.retry_after.count() > 0) r.next_try = std::max<std::time_t>(r.next_try, now_s() + o.retry_after.count());
      return;
    case Kind::Rejected:
      if (!o.ticket.empty()) r.ticket = o.ticket;
      return fail(r, Failure::Rejected, o.reason, t);
    case Kind::Accepted:  // only submit() may answer so, with a ticket it records
      return fail(r, Failure::VerificationFailed, "the CA accepted the request without a usable ticket", t);
    case Kind::Underconfigured: return fail(r, Failure::Underconfigured, o.reason, t);
    case Kind::Invalid: return fail(r, Failure::VerificationFailed, o.reason, t);
  }
}

void Manager::fetch_by_serial(Record& r, Target& t) {
  std::string serial = r.ticket;
  if (serial.rfind("npie:", 0) == 0) {
    const std::string npie = serial.substr(5);
    if (npie.empty()) throw StepFailure{Failure::Underconfigured, "no NPIE given and none configured for the key"};
    const Outcome found = idse_lookup_serial(t.config, npie);
    if (found.kind != Kind::Pending) return settle(r, found, t);
    if (found.ticket.empty() || found.ticket.size() > 512 || printable(found.ticket, 512) != found.ticket)
      return fail(r, Failure::VerificationFailed, "the CA's serial for NPIE " + npie + " is not printable text", t);
    // Recorded before the download asks for it.
    serial = r.ticket = found.ticket;
    persist(t.key.alias, r, "the CA's serial for NPIE " + npie + " is " + serial);
  }
  const Outcome o = idse_fetch(t.config, serial);
  if (o.kind != Kind::Issued) {
    if (o.kind == Kind::Pending) r.ticket = serial;
    return settle(r, o, t);
  }
  // Installed if and only if it is for a key on the token: the current key,
  // or the new key of the renewal under way.
  const Bytes spki = public_key_of(o.certificates.front());
  const pkcs11::KeyInfo* current = t.state && t.state->info ? &*t.state->info : nullptr;
  if (!r.spki.empty() && spki == r.spki) {
    // the renewal's new key: carry on with it
  } else if (current && spki == current->public_key) {
    if (r.new_key && !r.new_id.empty() && r.new_id != current->id) r.cleanup_id = r.new_id;
    r.new_key = false;
    r.old_id = r.new_id = current->id;
    r.old_spki = r.spki = current->public_key;
    r.old_certificate = current->certificate;
    r.for_serial = t.state->certificate ? t.state->certificate->serial_hex : "";
  } else {
    for (auto& w : tokens_) {
      const auto snap = w->snapshot();
      for (const auto& k : snap->keys)
        if (k.info && k.info->public_key == spki)
          throw VerificationError("certificate " + serial + " is for key '" + k.config.alias + "' (token " +
                                  w->config().name + "), not for '" + t.key.alias + "'; not installed");
    }
    throw VerificationError("certificate " + serial +
                            " is for a key that is not on the token (nor on any token firmad serves); not installed");
  }
  r.ticket = serial;
  settle(r, o, t);
}

void Manager::verify(Record& r, Target& t) {
  if (r.issued.empty()) throw VerificationError("no certificate was received");
  const std::vector<Bytes> others(r.issued.begin() + 1, r.issued.end());
  r.chain = verify_issued(r.issued.front(), others, r.spki, t.config.trust_anchors, now_s());
  const auto id = identify_certificate(r.issued.front());
  r.step = Step::Verified;
  persist(t.key.alias, r,
          "certificate verified: the token key's, chains to a trust anchor, valid until " + (id ? iso8601(id->not_after) : "?"));
}

void Manager::install(Record& r, Target& t) {
  require_token(*t.worker);
  const std::string alias = t.key.alias;
  const Bytes cert = r.issued.front();
  write_certificate(*t.worker, r.new_id, cert, alias);
  test_hooks::crash_point("certificate-written");
  // The commit: from here the daemon serves the new pair, also after a restart.
  const std::string uri = id_uri(r.new_id);
  r.step = Step::Installed;
  r.reason.clear();
  r.files_written = r.post_install_started = r.files_blocked = false;  // this certificate's, still to do
  // The URI firmad.toml names, kept beside the one served: at start the
  // renewed URI applies only while the file still names this one, so an
  // administrator's edit wins.
  const std::string file_uri = t.key.configured_uri.empty() ? t.key.uri : t.key.configured_uri;
  persist(alias, r, "certificate installed on the token next to its key", [&](Json& doc) {
    if (!r.new_key) return;
    if (!doc["keyUris"].is_object()) doc["keyUris"] = Json::object();
    doc["keyUris"][alias] = {{"uri", uri}, {"configured", file_uri}};
  });
  if (r.new_key) serve_key(*t.worker, alias, uri);
  else rescan_keys(*t.worker);  // the same key: serve its new certificate
}

void Manager::retire(Record& r, Target& t) {
  require_token(*t.worker);
  const std::string alias = t.key.alias;
  const RenewalConfig& c = t.config;
  const Bytes cert = r.issued.front();
  if (r.new_key) {
    // The old objects go only once the new key is what firmad serves.
    const std::string uri = id_uri(r.new_id);
    const Json doc = state_.read();
    const Json* recorded = nullptr;
    if (auto u = doc.find("keyUris"); u != doc.end() && u->is_object())
      if (auto k = u->find(alias); k != u->end() && k->is_object()) recorded = &*k;
    if (!recorded || recorded->value("uri", "") != uri) {
      r.step = Step::Verified;  // the commit did not take: install again
      return;
    }
    if (t.key.uri != uri) serve_key(*t.worker, alias, uri);
  }
  // Check before retiring anything: a crash may have torn the new pair (a
  // token rewrites an object in place). Then the old pair, if whole, is
  // served again and the renewal waits for an administrator.
  const std::string& alias_ = t.key.alias;
  auto self_test = [this, &alias_](const Bytes& id) { return [this, &alias_, id] { audit_signature(alias_, "renewal-self-test", id); }; };
  if (auto why = damaged_pair(*t.worker, r.new_id, cert, self_test(r.new_id))) {
    require_token(*t.worker);  // a token that went away is not a damaged pair
    r.failure = Failure::VerificationFailed;
    if (!r.new_key || r.old_certificate.empty() ||
        damaged_pair(*t.worker, r.old_id, r.old_certificate, self_test(r.old_id))) {
      r.reason = printable("the installed key pair is damaged (" + *why + ") and no whole previous pair is left");
      return;
    }
    const std::string old_uri = id_uri(r.old_id);
    const std::string file_uri = t.key.configured_uri.empty() ? t.key.uri : t.key.configured_uri;
    r.reason = printable("the installed key pair is damaged (" + *why + "); serving the previous key again");
    // Served first, recorded then: whoever sees the failure sees the old key
    // served (a crash in between serves the new URI again, and this check
    // puts the old one back).
    serve_key(*t.worker, alias, old_uri);
    persist(alias, r, r.reason, [&](Json& doc) {
      if (!doc["keyUris"].is_object()) doc["keyUris"] = Json::object();
      doc["keyUris"][alias] = {{"uri", old_uri}, {"configured", file_uri}};
    });
    return;
  }
  // The token holds the new pair already. A file that cannot be written is
  // the configuration's problem (a directory the unit does not grant, an
  // owner firmad may not give files to): the renewal stops underconfigured,
  // saying why, instead of retrying for ever; 'firmactl renew KEY' finishes
  // it once that is fixed.
  if (!r.files_written) {
    try {
      write_certificate_files(c, cert, r.chain);
    } catch (const StateError& e) {
      r.files_blocked = true;
      throw StepFailure{Failure::Underconfigured,
                        std::string("cannot write the certificate files: ") + e.what() +
                            "; fix that, then 'firmactl renew " + alias + "' finishes the renewal"};
    }
    r.files_written = true, r.files_blocked = false;
    persist(alias, r, "certificate files written");
  }
  std::string note;
  if (!r.post_install_started) {
    r.post_install_started = true;
    persist(alias, r, "running the post-install command");
    const std::string failed = run_post_install(c, alias);
    test_hooks::crash_point("post-install-ran");
    if (!failed.empty()) note = "; " + failed;
  }
  std::string backup;
  if (!r.old_certificate.empty() && r.old_certificate != cert)
    backup = back_up_certificate(state_.directory() / "backup", alias, r.for_serial, r.old_certificate);
  retire_old_objects(*t.worker, Retirement{r.old_id, r.new_id, r.cleanup_id, cert});
  r.step = Step::Retired;
  r.next_try = 0;
  r.csr.clear(), r.acceptance.clear();
  persist(alias, r, "previous certificate retired" + (backup.empty() ? std::string() : " (backup in " + backup + ")") + note);
}

}  // namespace firmad::renewal
