/// meshinit's release version.
let meshinitVersion = "0.1.0"

/// `--version`: the release and the git revision the binary was built from (written into
/// `Revision.swift` at build time by the `GitRevision` plugin).
let meshinitVersionLine = "\(meshinitVersion) (git \(meshinitRevision))"
