import ArgumentParser
import Foundation

/// An error whose description is written for the person at the command line: what went wrong
/// and where. The tools print it as one line and exit 1; anything else is a bug and keeps
/// ArgumentParser's own reporting.
public protocol UserFacingError: Error, CustomStringConvertible {}

/// Runs a command's body and turns a `UserFacingError` into `<tool>: error: <description>` on
/// standard error and exit status 1: the one error wrapper of every tool.
public func reportingUserErrors<T>(tool: String, _ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as any UserFacingError {
        FileHandle.standardError.write(Data("\(tool): error: \(error.description)\n".utf8))
        throw ExitCode.failure
    }
}

/// `reportingUserErrors` for async commands.
public func reportingUserErrors<T>(tool: String, _ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as any UserFacingError {
        FileHandle.standardError.write(Data("\(tool): error: \(error.description)\n".utf8))
        throw ExitCode.failure
    }
}

/// The one-line description of `error` when it is written for the person at the command line,
/// nil for anything else: what `runOnEveryRank` asks to tell a user's mistake from a bug.
public func userFacingMessage(_ error: any Error) -> String? {
    (error as? any UserFacingError)?.description
}
