import RunFiles

/// Why a report could not be made: the run file at fault, the line when one is to blame, and
/// the reason. The report's own failures (writing its output) are told the same way as its
/// inputs', so one type serves both.
public typealias ReportError = RunFileError
