// What a renewal does outside the token once the new certificate is served: files, post-install, backup.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "daemon/config.hpp"
#include "pkcs11/types.hpp"

namespace firmad::renewal {

using pkcs11::Bytes;

// Writes the configured certificate_file (PEM of `certificate`) and
// chain_file (PEM of `chain`), each atomically with the configured mode,
// owner and group. Throws StateError naming the file.
void write_certificate_files(const RenewalConfig& config, const Bytes& certificate, const std::vector<Bytes>& chain);

// Runs the configured post_install command (if any) with FIRMAD_KEY=`alias`,
// bounded by its time and output limits. Returns "" when it succeeded or
// none is configured, else a note saying how it failed (also logged).
std::string run_post_install(const RenewalConfig& config, const std::string& alias);

// Keeps `certificate` as `<dir>/<alias>-<serial>.pem` (mode 0600, the
// directory made 0700 if missing). Returns the file's path. Throws StateError.
std::string back_up_certificate(const std::filesystem::path& dir, const std::string& alias, const std::string& serial,
                                const Bytes& certificate);

}  // namespace firmad::renewal
