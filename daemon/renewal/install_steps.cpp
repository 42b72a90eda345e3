// A renewal's effects outside the token: certificate files, the post-install command, the backup.
#include "daemon/renewal/install_steps.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "daemon/log.hpp"
#include "daemon/renewal/crypto.hpp"
#include "daemon/renewal/subprocess.hpp"
#include "daemon/state.hpp"

namespace firmad::renewal {

namespace {
constexpr std::size_t kPostInstallOutput = 64 * 1024;
}  // namespace

namespace {

// Whether this process may give a file to `owner`/`group`: without
// CAP_CHOWN (the shipped unit grants none) only to its own uid, and to a
// group it is in. Throws StateError saying what to configure instead.
void check_ownership(const RenewalConfig& c) {
  if (::geteuid() == 0) return;
  if (c.file_owner && *c.file_owner != ::geteuid())
    throw StateError("firmad (uid " + std::to_string(::geteuid()) + ") cannot give files to uid " +
                     std::to_string(*c.file_owner) +
                     " (file_owner): without CAP_CHOWN a file stays firmad's; leave file_owner unset and use "
                     "file_group with a group firmad's user is in");
  if (c.file_group && *c.file_group != ::getegid()) {
    std::vector<gid_t> groups(static_cast<std::size_t>(std::max(::getgroups(0, nullptr), 0)));
    groups.resize(static_cast<std::size_t>(std::max(::getgroups(static_cast<int>(groups.size()), groups.data()), 0)));
    if (std::find(groups.begin(), groups.end(), *c.file_group) == groups.end())
      throw StateError("firmad (uid " + std::to_string(::geteuid()) + ") cannot give files to gid " +
                       std::to_string(*c.file_group) + " (file_group): its user is not in that group");
  }
}

}  // namespace

void write_certificate_files(const RenewalConfig& c, const Bytes& certificate, const std::vector<Bytes>& chain) {
  if (!c.certificate_file.empty() || !c.chain_file.empty()) check_ownership(c);
  if (!c.certificate_file.empty())
    replace_file(c.certificate_file, to_pem(certificate), c.file_mode, c.file_owner, c.file_group);
  if (!c.chain_file.empty()) {
    std::string pem;
    for (const auto& x : chain) pem += to_pem(x);
    replace_file(c.chain_file, pem, c.file_mode, c.file_owner, c.file_group);
  }
}

std::string run_post_install(const RenewalConfig& c, const std::string& alias) {
  if (c.post_install.empty()) return {};
  ProgramResult p;
  try {
    p = run_program(c.post_install, {"PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C", "FIRMAD_KEY=" + alias},
                    c.post_install_timeout, kPostInstallOutput);
  } catch (const std::exception& e) {
    p.errors = e.what();
  }
  if (p.exit_code == 0) return {};
  const std::string result = p.describe(c.post_install_timeout, kPostInstallOutput);
  log::warning("post-install-failed", {{"key", alias}, {"result", result}, {"stderr", p.errors.substr(0, 200)}});
  return "post-install command failed (" + result + ")";
}

std::string back_up_certificate(const std::filesystem::path& dir, const std::string& alias, const std::string& serial,
                                const Bytes& certificate) {
  ::mkdir(dir.c_str(), 0700);
  const std::string path = (dir / (alias + "-" + (serial.empty() ? "unknown" : serial) + ".pem")).string();
  replace_file(path, to_pem(certificate), 0600);
  return path;
}

}  // namespace firmad::renewal
