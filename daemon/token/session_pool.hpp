// The signing threads' sessions: one slot per thread, each opened, reopened, closed or forgotten whole.
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

#include "pkcs11/module.hpp"
#include "pkcs11/session.hpp"
#include "pkcs11/types.hpp"

namespace firmad {

// Not synchronised: the token worker holds its lock around every call (a
// signing thread reads its own slot while it runs a job).
class SessionPool {
 public:
  explicit SessionPool(std::size_t size = 0) : sessions_(size) {}

  std::size_t size() const noexcept { return sessions_.size(); }
  // Slot i's session, or null while it has none.
  pkcs11::Session* at(std::size_t i) const { return sessions_.at(i).get(); }

  // Opens a session for every slot on the token in `slot`: all of them, or
  // none (throws pkcs11::Error and the pool is unchanged). Call without the
  // worker's lock (it talks to the token); hand the result to replace_all.
  std::vector<std::unique_ptr<pkcs11::Session>> open_all(const std::shared_ptr<pkcs11::Module>& module,
                                                         pkcs11::SlotId slot) const;
  // Puts freshly opened sessions in place of the old ones, which are closed.
  void replace_all(std::vector<std::unique_ptr<pkcs11::Session>> opened);
  // Slot i gets a session opened anew (after its old one died).
  void reopen(std::size_t i, std::unique_ptr<pkcs11::Session> fresh);

  // How sessions are let go: closed with C_CloseSession (the module still
  // holds them), or forgotten (the module declared them gone and may already
  // have given their numbers to other sessions, which a close would end).
  enum class Handles { Close, Forget };
  void drop(std::size_t i, Handles handles);
  void drop_all(Handles handles);

 private:
  std::vector<std::unique_ptr<pkcs11::Session>> sessions_;
};

}  // namespace firmad
