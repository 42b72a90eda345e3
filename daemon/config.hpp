// firmad.toml read once into typed structs and validated.
#pragma once
#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "daemon/log.hpp"

namespace firmad {

inline constexpr const char* kDefaultConfigPath = "/etc/firmad/firmad.toml";

// Who may do something: by uid, or by membership (primary or supplementary) of a gid.
struct AccessList {
  std::vector<uid_t> users;
  std::vector<gid_t> groups;
};

enum class PinSource { File, Credential, Admin };

struct TokenConfig {
  std::string name;          // [tokens.<name>]
  std::string module;        // path or p11-kit registered name
  std::string uri;           // RFC 7512 URI selecting the token
  std::size_t sessions = 1;  // signing sessions, one worker thread each
  std::size_t queue_limit = 64;
  PinSource pin_source = PinSource::Admin;
  std::string pin_file;       // pin_source = "file"
  std::string pin_credential; // pin_source = "credential": name in $CREDENTIALS_DIRECTORY
  std::chrono::milliseconds refresh_interval{5000};
};

enum class RenewalProvider { Idse, Helper, Est };

// [keys.<alias>.renewal]: how and when the key's certificate is renewed.
// Durations are written with a unit ("500ms", "60s", "10m", "6h", "2d").
struct RenewalConfig {
  RenewalProvider provider = RenewalProvider::Idse;  // provider = "idse" | "helper" | "est" (required)
  bool new_key = true;                                // key = "new" | "reuse"
  std::string key_type;   // "rsa-2048" ... "ec-p384"; empty: like the current key
  std::string subject;    // OpenSSL one-line form "/C=MX/O=.../CN=..."; empty: the current certificate's
  // PEM files (absolute paths) an issued certificate must chain to; they also
  // verify HTTPS servers. At least one.
  std::vector<std::string> trust_anchors;

  // Scheduling.
  bool automatic = true;           // firmad renews by itself when due
  std::optional<int> before_days;  // due this many days before notAfter, instead of lifetime_fraction
  double lifetime_fraction = 2.0 / 3.0;
  std::chrono::seconds jitter{std::chrono::hours(12)};  // a random delay in [0, jitter) added to the due time
  std::chrono::seconds retry_initial{60};
  std::chrono::seconds retry_max{std::chrono::hours(6)};
  std::vector<int> warn_days{30, 7, 1};  // distinct, descending

  // Installing the new certificate.
  std::string certificate_file;  // PEM written atomically after install; empty: none
  std::string chain_file;        // PEM chain; empty: none
  std::optional<uid_t> file_owner;
  std::optional<gid_t> file_group;
  mode_t file_mode = 0644;
  std::vector<std::string> post_install;  // argv run after install; absolute program path; empty: none
  std::chrono::milliseconds post_install_timeout{30000};

  // Network (idse, est).
  std::string url;  // idse: "https://host:port"; est: "https://host:port/.well-known/est"
  std::string lookup_path = "/idse/consultaSerie.idse?NPIE={npie}";
  std::string submit_path = "/idse/solicitudRenovacion.idse";
  std::string fetch_path = "/idse/instalaRenovacion.idse?SERIAL_NOM={serial}";
  std::chrono::milliseconds connect_timeout{10000};
  std::chrono::milliseconds timeout{60000};
  std::size_t max_response_bytes = 1024 * 1024;
  int max_redirects = 3;

  // helper: a certmonger CA helper.
  std::vector<std::string> command;  // argv, absolute program path
  std::chrono::milliseconds helper_timeout{60000};
  std::size_t helper_max_output = 1024 * 1024;

  // idse: the text signed as CMS to accept the terms of the new certificate.
  std::string acceptance_text = "ACEPTO los terminos y condiciones del certificado digital IMSS";
};

struct KeyConfig {
  std::string alias;  // [keys.<alias>]
  std::string token;  // a [tokens.<name>]
  std::string uri;    // RFC 7512 URI selecting the key's objects on that token
  // The URI as firmad.toml (or the import) wrote it. `uri` may differ once a
  // renewal installed a new key; this one never changes while firmad runs.
  std::string configured_uri;
  AccessList allow;   // who may sign with it
  // The employer's registration this credential belongs to (shown in status).
  std::string npie;               // Número Patronal de Identificación Electrónica
  std::string registro_patronal;  // the IMSS employer registration number
  std::string role = "principal"; // "principal" or "additional" (certificado adicional)
  bool imported = false;          // added by 'firmactl import', kept in the state directory
  // The key needs the PIN for every signature (CKA_ALWAYS_AUTHENTICATE: PIV
  // slot 9c, qualified-signature cards) and the administrator lets firmad
  // keep the PIN, in locked memory, to give it to the token each time.
  bool pin_per_signature = false;
  // The key may sign SHA-1 digests (default false): for services that still
  // ask for rsa-sha1 (SAT's download web service's XMLDSig, old PKCS#11
  // programs). Refused with HashNotAllowed otherwise.
  bool allow_sha1 = false;
  std::optional<RenewalConfig> renewal;  // [keys.<alias>.renewal]; nullopt: not renewed by firmad
};

// Days besides weekends and the federal holidays on which requests do not advance.
struct CalendarConfig {
  std::vector<std::string> extra_non_working_days;  // "YYYY-MM-DD"
};

struct DaemonConfig {
  std::string socket = "/run/firmad/firmad.sock";
  mode_t socket_mode = 0660;
  std::optional<gid_t> socket_group;
  std::string state_directory = "/var/lib/firmad";
  std::size_t max_connections = 128;
  std::size_t max_connections_per_peer = 16;
  std::chrono::milliseconds idle_timeout{30000};
  // How long the I/O thread and the signing threads poll for the next piece
  // of work before they sleep (0: never poll).
  std::chrono::microseconds busy_poll{50};
  log::Level log_level = log::Level::Info;
  // Request bytes buffered beyond each connection's first 16 KiB, in all
  // and per uid: a read past a ceiling is answered BuffersFull and the
  // connection closed (doc/architecture.md, "Fair share").
  std::size_t max_buffered_bytes = 24u << 20;
  std::size_t max_buffered_bytes_per_peer = 8u << 20;
  // The audit trail (daemon/audit.hpp): an append-only file ("-": stderr),
  // how many records may wait for it, and how long a call waits for room
  // before it is refused with AuditUnavailable.
  std::string audit_file = "/var/log/firmad/audit.log";
  std::size_t audit_queue = 65536;
  std::chrono::milliseconds audit_wait{5000};
};

struct Config {
  std::string path;
  DaemonConfig daemon;
  AccessList admins;  // [access] admin_users / admin_groups
  std::vector<TokenConfig> tokens;
  std::vector<KeyConfig> keys;
  CalendarConfig calendar;

  const TokenConfig* token(const std::string& name) const;
  const KeyConfig* key(const std::string& alias) const;
};

// what(): "<file>: <key>: <problem> (accepted: ...)".
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Whether a token name or key alias is acceptable: 1-64 of letters, digits, '-', '_', '.'.
bool valid_key_name(std::string_view name);

// Reads and validates the file. Throws ConfigError naming the file, the key
// and the accepted values for anything wrong, unknown keys included.
Config load_config(const std::string& path);

}  // namespace firmad
