// Varlink error names and the exception that carries one to the peer.
#pragma once
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace firmad::protocol {

namespace error {
// org.varlink.service standard errors.
inline constexpr const char* kInterfaceNotFound = "org.varlink.service.InterfaceNotFound";
inline constexpr const char* kMethodNotFound = "org.varlink.service.MethodNotFound";
inline constexpr const char* kMethodNotImplemented = "org.varlink.service.MethodNotImplemented";
inline constexpr const char* kInvalidParameter = "org.varlink.service.InvalidParameter";
inline constexpr const char* kPermissionDenied = "org.varlink.service.PermissionDenied";
inline constexpr const char* kExpectedMore = "org.varlink.service.ExpectedMore";
// io.firmad.Signer errors; protocol/io.firmad.Signer.varlink documents each.
inline constexpr const char* kProtocolViolation = "io.firmad.Signer.ProtocolViolation";
inline constexpr const char* kAccessDenied = "io.firmad.Signer.AccessDenied";
inline constexpr const char* kKeyNotFound = "io.firmad.Signer.KeyNotFound";
inline constexpr const char* kTokenNotFound = "io.firmad.Signer.TokenNotFound";
inline constexpr const char* kTokenAbsent = "io.firmad.Signer.TokenAbsent";
inline constexpr const char* kNotLoggedIn = "io.firmad.Signer.NotLoggedIn";
inline constexpr const char* kPinIncorrect = "io.firmad.Signer.PinIncorrect";
inline constexpr const char* kPinLocked = "io.firmad.Signer.PinLocked";
inline constexpr const char* kPinFinalTry = "io.firmad.Signer.PinFinalTry";
inline constexpr const char* kPinSourceUnavailable = "io.firmad.Signer.PinSourceUnavailable";
inline constexpr const char* kMechanismNotSupported = "io.firmad.Signer.MechanismNotSupported";
inline constexpr const char* kInvalidBase64 = "io.firmad.Signer.InvalidBase64";
inline constexpr const char* kDigestLengthMismatch = "io.firmad.Signer.DigestLengthMismatch";
inline constexpr const char* kContentTooLarge = "io.firmad.Signer.ContentTooLarge";
inline constexpr const char* kCertificateExpired = "io.firmad.Signer.CertificateExpired";
inline constexpr const char* kKeyCancelled = "io.firmad.Signer.KeyCancelled";
inline constexpr const char* kKeyExists = "io.firmad.Signer.KeyExists";
inline constexpr const char* kHashNotAllowed = "io.firmad.Signer.HashNotAllowed";
inline constexpr const char* kKeyNeedsPinPerSignature = "io.firmad.Signer.KeyNeedsPinPerSignature";
inline constexpr const char* kImportInProgress = "io.firmad.Signer.ImportInProgress";
inline constexpr const char* kImportFailed = "io.firmad.Signer.ImportFailed";
inline constexpr const char* kCertificateMissing = "io.firmad.Signer.CertificateMissing";
inline constexpr const char* kRenewalNotConfigured = "io.firmad.Signer.RenewalNotConfigured";
inline constexpr const char* kRenewalInProgress = "io.firmad.Signer.RenewalInProgress";
inline constexpr const char* kQueueFull = "io.firmad.Signer.QueueFull";
inline constexpr const char* kShuttingDown = "io.firmad.Signer.ShuttingDown";
inline constexpr const char* kTokenError = "io.firmad.Signer.TokenError";
inline constexpr const char* kAuditUnavailable = "io.firmad.Signer.AuditUnavailable";
inline constexpr const char* kBuffersFull = "io.firmad.Signer.BuffersFull";
inline constexpr const char* kInternalError = "io.firmad.Signer.InternalError";
}  // namespace error

// An error reply: the Varlink error name plus its parameters. The what() text
// is for logs and is built only from the name and parameters, never secrets.
class VarlinkError : public std::runtime_error {
 public:
  VarlinkError(std::string name, nlohmann::json parameters = nlohmann::json::object())
      : std::runtime_error(name + " " + parameters.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)),
        name_(std::move(name)),
        parameters_(std::move(parameters)) {}

  const std::string& name() const noexcept { return name_; }
  const nlohmann::json& parameters() const noexcept { return parameters_; }

 private:
  std::string name_;
  nlohmann::json parameters_;
};

// Shorthand for the most common refusal: a parameter that is missing or wrong.
inline VarlinkError invalid_parameter(const std::string& name) {
  return VarlinkError(error::kInvalidParameter, {{"parameter", name}});
}

}  // namespace firmad::protocol
