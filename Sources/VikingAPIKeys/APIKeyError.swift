/// Why an API key hash could not be made, parsed or checked.
///
/// A key that simply does not match a well-formed hash is not an error: `APIKeyHasher.verify` returns `false`.
/// These cases are for hash strings that cannot be trusted to mean anything, and for failures of the machinery.
public enum APIKeyError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The string is not shaped like a PHC string (`$<variant>$v=<n>$m=<n>,t=<n>,p=<n>$<salt>$<hash>`).
    case malformed(String)
    /// A required part of the PHC string is absent (`"version"`, `"parameters"`, `"salt"`, `"hash"`, ...).
    case missingField(String)
    /// The algorithm is not Argon2id (for example `argon2i`, `argon2d`, `bcrypt`).
    case unsupportedVariant(String)
    /// The Argon2 version is not 19 (0x13), the only one computed here.
    case unsupportedVersion(String)
    /// A parameter is present but not a plain decimal number, or the parameter list is not `m=,t=,p=`.
    case invalidParameter(name: String, value: String)
    /// A parameter (or the salt or hash length) is outside the range this verifier accepts.
    case parameterOutOfRange(name: String, value: String, allowed: ClosedRange<Int>)
    /// The salt or hash field is not unpadded standard base64 (`A-Z a-z 0-9 + /`).
    case invalidBase64(field: String)
    /// The key is longer than Argon2 accepts (2^32 - 1 bytes).
    case keyTooLong(Int)
    /// The system random number generator failed while making a salt.
    case randomFailure(String)
    /// libargon2 refused or failed (code and `argon2_error_message`).
    case argon2(code: Int32, message: String)

    public var description: String {
        switch self {
        case .malformed(let why):
            return "malformed Argon2 PHC string: \(why)"
        case .missingField(let field):
            return "malformed Argon2 PHC string: missing \(field)"
        case .unsupportedVariant(let variant):
            return "unsupported password hash algorithm '\(variant)': only argon2id is accepted"
        case .unsupportedVersion(let version):
            return "unsupported Argon2 version '\(version)': only v=19 (0x13) is accepted"
        case .invalidParameter(let name, let value):
            return "invalid Argon2 parameter \(name)='\(value)': expected a decimal number in the form m=<KiB>,t=<iterations>,p=<lanes>"
        case .parameterOutOfRange(let name, let value, let allowed):
            return "Argon2 \(name) = \(value) is out of the accepted range \(allowed.lowerBound)...\(allowed.upperBound)"
        case .invalidBase64(let field):
            return "malformed Argon2 PHC string: the \(field) is not valid base64 (standard alphabet, canonical, written without padding)"
        case .keyTooLong(let count):
            return "API key of \(count) bytes is too long for Argon2"
        case .randomFailure(let why):
            return "could not generate a random salt: \(why)"
        case .argon2(let code, let message):
            return "libargon2 failed (\(code)): \(message)"
        }
    }
}
