import MeshModel

/// Explanations as text for people and JSON for tools. `sources` names what is behind each
/// setting (`-x/--istio-service-exclude-cidr "10.0.0.0/8"`, an environment variable, an
/// annotation); a rule shows the sources of its origin. A rule's rendering is made once and
/// reused for every packet that meets it (10,000 packets share a few dozen rules).
public final class Report {
    public let ruleset: Ruleset
    public let sources: [CaptureSetting: [String]]
    private var textCache: [Int: String] = [:]
    /// By rule id and hook (a chain of ours can be reached from two hooks).
    private var jsonCache: [Int: String] = [:]
    /// Reasons by what they depend on (the decisive rule, the verdict, the path's length).
    private var reasonCache: [ReasonKey: String] = [:]
    private var reasonJSONCache: [ReasonKey: String] = [:]
    private var verdictCache: [VerdictKey: String] = [:]
    private var templates: [TemplateKey: Template?] = [:]
    private var pathCache: [[Int]: String] = [:]

    /// Everything a reason reads: the decisive rule and its place on the path, or, without
    /// one, the path's length and its last rule (whose jump the reason names).
    struct ReasonKey: Hashable {
        var decisive: Int
        var kind: String
        var steps: Int
        var last: Int
    }

    public init(ruleset: Ruleset, sources: [CaptureSetting: [String]]) {
        self.ruleset = ruleset
        self.sources = sources
    }

    public func entry(_ step: Step) -> RuleEntry { ruleset.entries[step.entry] }

    /// The iptables line of a step (empty for a live rule that has none).
    public func iptables(_ step: Step) -> String { step.item ?? entry(step).iptables ?? "" }

    /// What a rule comes from: its settings' sources (none: one of Istio's fixed rules).
    public func from(_ entry: RuleEntry) -> [String] {
        var out: [String] = []
        for setting in entry.origin {
            for source in sources[setting] ?? [setting.rawValue] where !out.contains(source) { out.append(source) }
        }
        return out
    }

    /// One sentence: where the packet ends up.
    public func verdictText(_ e: Explanation) -> String { verdictText(e, original: original(e.packet)) }

    /// The packet's destination as the verdict names it.
    func original(_ p: Packet) -> String { Texts(p).original }

    /// The texts of a packet's destination, each made once per packet.
    struct Texts {
        /// The address alone (nil: the pod's address).
        var destination: String?
        /// `ADDR:PORT`, `[ADDR]:PORT`, `:PORT`.
        var endpoint: String
        /// As the verdict names it.
        var original: String

        init(_ p: Packet) {
            let port = String(p.destinationPort.value)
            guard let address = p.destination?.description else {
                destination = nil
                endpoint = ":" + port
                original = "the pod's address, port " + port
                return
            }
            destination = address
            endpoint = p.family == .ipv6 ? "[" + address + "]:" + port : address + ":" + port
            original = endpoint
        }
    }

    /// The destination after nat's rewrite (`the pod's address, port N` when unknown).
    func final(_ e: Explanation) -> String {
        e.destination == nil
            ? "the pod's address, port \(e.destinationPort)" : e.packet.endpoint(e.destination, e.destinationPort)
    }

    func verdictText(_ e: Explanation, original: String) -> String {
        verdictText(e, original: original, port: String(e.packet.destinationPort.value))
    }

    /// What a verdict's text depends on besides the packet's destination (or port).
    struct TemplateKey: Hashable {
        var verdict: Verdict
        var delivery: Delivery
        var direction: Direction
        var proto: L4Protocol
    }

    /// A verdict's text around its one variable part (none, the destination, or the port).
    struct Template {
        enum Middle { case none, original, port }
        var prefix: String
        var middle: Middle
        var suffix: String
        /// Whether no byte of it needs a JSON escape.
        var plain: Bool
    }

    /// The verdict's text appended to `out` (as a JSON string with `json`), from a template
    /// made once per kind of verdict (a nat rewrite after TPROXY names two addresses: made
    /// whole).
    func appendVerdictText<Out: TextOutput>(_ e: Explanation, _ texts: Texts, json: Bool, to out: inout Out) {
        let template: Template?
        if e.rewritten {
            template = nil
        } else {
            let key = TemplateKey(
                verdict: e.verdict, delivery: e.delivery, direction: e.packet.direction, proto: e.packet.proto)
            if let cached = templates[key] {
                template = cached
            } else {
                let marker = "\u{1}"
                let whole = verdictText(e, original: marker, port: marker)
                let parts = whole.split(separator: "\u{1}", omittingEmptySubsequences: false)
                let made: Template? =
                    parts.count > 2
                    ? nil
                    : Template(
                        prefix: String(parts[0]),
                        middle: parts.count == 1
                            ? .none : verdictText(e, original: marker, port: "").contains(marker) ? .original : .port,
                        suffix: parts.count == 2 ? String(parts[1]) : "",
                        plain: !whole.utf8.contains { ($0 < 0x20 && $0 != 1) || $0 == 0x22 || $0 == 0x5c })
                templates[key] = made
                template = made
            }
        }
        guard let template, template.plain || !json else {
            let text = verdictText(e, original: texts.original)
            if json { Self.writeString(text, to: &out) } else { out += text }
            return
        }
        if json { out += "\"" }
        out += template.prefix
        switch template.middle {
        case .none: break
        case .original: out += texts.original
        case .port: out += String(e.packet.destinationPort.value)
        }
        out += template.suffix
        if json { out += "\"" }
    }

    func verdictText(_ e: Explanation, original: String, port destinationPort: String) -> String {
        let p = e.packet
        switch e.verdict {
        case .redirected(let port, let listener):
            let kept = "original destination \(original) kept\(p.proto == .tcp ? " (SO_ORIGINAL_DST)" : "")"
            switch listener {
            case .dns?: return "DNS captured: redirected to port \(port), istio-agent's DNS proxy; \(kept)"
            case .proxyPort?: return "captured: redirected to port \(port), the proxy's outbound listener; \(kept)"
            case .inboundCapturePort?:
                return "captured: redirected to port \(port), the proxy's inbound listener; \(kept)"
            default: return "captured: redirected to port \(port); \(kept)"
            }
        case .tproxied(let port, let mark):
            guard e.rewritten else {
                return
                    "captured: TPROXY to port \(port) with mark \(mark) (policy routing delivers it to the transparent listener); addresses kept"
            }
            return
                "captured: TPROXY to port \(port) with mark \(mark) (policy routing delivers it to the transparent listener), then nat REDIRECT rewrote the destination to \(final(e)): the listener on \(port) gets it at that address; original destination \(original) kept\(p.proto == .tcp ? " (SO_ORIGINAL_DST)" : "")"
        case .dropped:
            return "dropped"
        case .notCaptured:
            switch e.delivery {
            case .leaves(let via): return "not captured: leaves the pod for \(original) through \(via)"
            case .forwarded(let via):
                return
                    "not captured: forwarded (\(original) is not the pod's address) through \(via.map(\.name) ?? "the interface of its route")"
            case .local where p.direction == .out:
                return "not captured: delivered in the pod to \(original) over lo"
            default: return "not captured: delivered to the app on port \(destinationPort)"
            }
        case .uncertain:
            return "uncertain: the kernel holds a rule on this path that explain cannot evaluate"
        }
    }

    /// Why: the decisive rule and what it comes from.
    public func reasonText(_ e: Explanation) -> String {
        let key = reasonKey(e)
        if let cached = reasonCache[key] { return cached }
        let text = reason(e)
        reasonCache[key] = text
        return text
    }

    /// `reasonText` as a JSON string (it quotes flag values), escaped once per reason.
    private func reasonJSON(_ e: Explanation) -> String {
        let key = reasonKey(e)
        if let cached = reasonJSONCache[key] { return cached }
        var text = ""
        JSONValue.writeString(reasonText(e), to: &text)
        reasonJSONCache[key] = text
        return text
    }

    private func reasonKey(_ e: Explanation) -> ReasonKey {
        ReasonKey(
            decisive: e.decisive.map { e.steps[$0].entry } ?? -1, kind: e.verdict.kind,
            steps: e.decisive ?? -e.steps.count, last: e.steps.last?.entry ?? -1)
    }

    private func reason(_ e: Explanation) -> String {
        guard let i = e.decisive else {
            switch e.verdict {
            case .notCaptured where e.steps.isEmpty: return "no rule captured it"
            case .notCaptured:
                let last = e.steps[e.steps.count - 1]
                if case .jump(let chain)? = entry(last).target {
                    return
                        "no rule captured it: rule \(e.steps.count) sent it to \(chain.iptablesName), where no rule matched it"
                }
                return "no rule captured it: after rule \(e.steps.count) it matched no further rule"
            default: return ""
            }
        }
        let decisive = entry(e.steps[i])
        let from = self.from(decisive)
        let origin = from.isEmpty ? "one of Istio's fixed rules" : "from " + from.joined(separator: ", ")
        switch e.verdict {
        case .notCaptured: return "let go by rule \(i + 1) (\(origin))"
        case .uncertain where decisive.matches == nil:
            return "rule \(i + 1) has a match explain cannot evaluate, so whether it applies is unknown"
        case .uncertain:
            return "rule \(i + 1) matches, and its target is not one of meshinit's: explain does not follow it"
        default: return "decided by rule \(i + 1) (\(origin))"
        }
    }

    /// The explanation as indented text, ending with a newline.
    public func text(_ e: Explanation, extra: [String] = []) -> String {
        var out = ""
        text(e, extra: extra, into: &out)
        return out
    }

    /// The same, appended to `out` (one growing buffer for thousands of packets).
    public func text(_ e: Explanation, extra: [String] = [], into out: inout String) { write(e, extra, &out) }

    /// The same, appended to a byte buffer.
    public func text(_ e: Explanation, extra: [String] = [], into out: inout OutputBuffer) { write(e, extra, &out) }

    private func write<Out: TextOutput>(_ e: Explanation, _ extra: [String], _ out: inout Out) {
        let texts = Texts(e.packet)
        e.packet.write(to: &out, endpoint: texts.endpoint)
        out += "\n  backend "
        out += e.backend.rawValue
        out += e.packet.family == .ipv4 ? ", ipv4\n" : ", ipv6\n"
        for (i, step) in e.steps.enumerated() {
            out += "  "
            out += String(i + 1)
            out += " "
            if let item = step.item {
                out += "\(step.table.rawValue) \(step.chain.iptablesName): \(item)\n"
                out += stepDetails(step.entry, nftShown: false)
            } else {
                out += stepText(step)
            }
        }
        if e.steps.isEmpty { out += "  no rule matched\n" }
        for note in e.notes { out += "  note: \(note)\n" }
        out += "  verdict: "
        appendVerdictText(e, texts, json: false, to: &out)
        out += "\n"
        let reason = reasonText(e)
        if !reason.isEmpty { out += "  why: \(reason)\n" }
        for line in extra { out += "  \(line)\n" }
    }

    /// `nat ISTIO_OUTPUT: -A … \n      nft: …\n      from: …\n`, once per rule.
    private func stepText(_ step: Step) -> String {
        if let cached = textCache[step.entry] { return cached }
        let rule = entry(step)
        let line = rule.iptables ?? ""
        let text =
            "\(step.table.rawValue) \(step.chain.iptablesName): \(line.isEmpty ? rule.nft : line)\n"
            + stepDetails(step.entry, nftShown: line.isEmpty)
        textCache[step.entry] = text
        return text
    }

    private func stepDetails(_ id: Int, nftShown: Bool) -> String {
        let rule = ruleset.entries[id]
        var out = ""
        if !nftShown && !rule.nft.isEmpty { out += "      nft: \(rule.nft)\n" }
        let from = self.from(rule)
        if !from.isEmpty { out += "      from: \(from.joined(separator: "; "))\n" }
        return out
    }

    /// The explanation as one JSON object, serialized (no newline). `extra` members are
    /// appended as they are. Written piece by piece: the packet's fields are validated
    /// values (no character needs escaping), the texts that may hold quotes are escaped.
    public func json(_ e: Explanation, extra: [(String, JSONValue)] = []) -> String {
        var out = ""
        json(e, extra: extra, into: &out)
        return out
    }

    /// The same, appended to `out`.
    public func json(_ e: Explanation, extra: [(String, JSONValue)] = [], into out: inout String) {
        writeJSON(e, extra, &out)
    }

    /// The same, appended to a byte buffer.
    public func json(_ e: Explanation, extra: [(String, JSONValue)] = [], into out: inout OutputBuffer) {
        writeJSON(e, extra, &out)
    }

    private func writeJSON<Out: TextOutput>(_ e: Explanation, _ extra: [(String, JSONValue)], _ out: inout Out) {
        let p = e.packet
        // Appended piece by piece, without intermediate strings: the packet's fields are
        // validated values, nothing to escape.
        func quoted(_ text: String?) {
            if let text {
                out += "\""
                out += text
                out += "\""
            } else {
                out += "null"
            }
        }
        func number(_ value: UInt32?) {
            if let value { out += String(value) } else { out += "null" }
        }
        let texts = Texts(p)
        out += "{\"packet\":\""
        p.write(to: &out, endpoint: texts.endpoint)
        out += Self.heads[(p.direction == .out ? 0 : 4) + (p.proto == .tcp ? 0 : 2) + (p.family == .ipv4 ? 0 : 1)]
        quoted(texts.destination)
        out += ",\"port\":"
        out += String(p.destinationPort.value)
        out += ",\"source\":"
        quoted(p.source?.description)
        out += ",\"sourcePort\":"
        number(p.sourcePort.map { UInt32($0.value) })
        out += ",\"uid\":"
        number(p.uid?.value)
        out += ",\"gid\":"
        number(p.gid?.value)
        out += ",\"interface\":\""
        out += p.interface.name
        out += "\",\"mark\":"
        out += String(p.mark.value)
        out += e.backend == .iptables ? ",\"backend\":\"iptables\"" : ",\"backend\":\"nft\""
        // The whole path, once per path of rules without a list's item (few distinct paths
        // serve thousands of packets).
        if e.steps.allSatisfy({ $0.item == nil }) {
            let key = e.steps.map { $0.entry * Hook.allCases.count + Hook.allCases.firstIndex(of: $0.hook)! }
            if let cached = pathCache[key] {
                out += cached
            } else {
                var path = ",\"path\":["
                for (i, step) in e.steps.enumerated() {
                    if i > 0 { path += "," }
                    path += stepJSON(step)
                }
                path += "]"
                pathCache[key] = path
                out += path
            }
        } else {
            out += ",\"path\":["
            for (i, step) in e.steps.enumerated() {
                if i > 0 { out += "," }
                out += stepJSON(step)
            }
            out += "]"
        }
        // From "decisive" to "localAddress": the same for every packet with this verdict,
        // made once.
        let key = VerdictKey(decisive: e.decisive, verdict: e.verdict, delivery: e.delivery, rewritten: e.rewritten)
        if let cached = verdictCache[key] {
            out += cached
        } else {
            let block = verdictBlock(e)
            verdictCache[key] = block
            out += block
        }
        if case .local = e.delivery, e.destination != nil {
            out += "\""
            if !e.rewritten && e.destination == p.destination {
                out += texts.endpoint
            } else {
                out += p.endpoint(e.destination, e.destinationPort)
            }
            out += "\""
        } else {
            out += "null"
        }
        out += ",\"text\":"
        appendVerdictText(e, texts, json: true, to: &out)
        out += ",\"why\":"
        out += reasonJSON(e)
        out += "},\"notes\":"
        if e.notes.isEmpty {
            out += "[]"
        } else {
            var notes = ""
            JSONValue.array(e.notes.map(JSONValue.string)).write(to: &notes)
            out += notes
        }
        for (key, value) in extra {
            var member = ","
            JSONValue.writeString(key, to: &member)
            member += ":"
            value.write(to: &member)
            out += member
        }
        out += "}"
    }

    /// `","direction":…,"protocol":…,"family":…,"destination":` by direction, protocol, family.
    static let heads: [String] = ["out", "in"].flatMap { d in
        ["tcp", "udp"].flatMap { p in
            ["ipv4", "ipv6"].map { f in
                "\",\"direction\":\"" + d + "\",\"protocol\":\"" + p + "\",\"family\":\"" + f + "\",\"destination\":"
            }
        }
    }

    struct VerdictKey: Hashable {
        var decisive: Int?
        var verdict: Verdict
        var delivery: Delivery
        var rewritten: Bool
    }

    /// `,"decisive":N,"verdict":{"kind":…,"rewritten":B,"localAddress":`.
    private func verdictBlock(_ e: Explanation) -> String {
        func quoted(_ text: String?) -> String { text.map { "\"" + $0 + "\"" } ?? "null" }
        var out = ",\"decisive\":"
        out += e.decisive.map { String($0 + 1) } ?? "null"
        out += ",\"verdict\":{\"kind\":\""
        out += e.verdict.kind
        out += "\""
        switch e.verdict {
        case .redirected(let port, let listener):
            let name: String? =
                switch listener {
                case .proxyPort?: "outbound"
                case .inboundCapturePort?: "inbound"
                case .dns?: "dns"
                default: nil
                }
            out += ",\"port\":\(port),\"listener\":\(quoted(name))"
        case .tproxied(let port, let mark):
            out += ",\"port\":\(port),\"mark\":\(mark)"
        default:
            break
        }
        out += ",\"where\":"
        out += quoted(e.delivery.kind)
        out += ",\"interface\":"
        switch e.delivery {
        case .leaves(let via): out += quoted(via.name)
        case .forwarded(let via): out += quoted(via?.name)
        default: out += "null"
        }
        out += ",\"rewritten\":"
        out += e.rewritten ? "true" : "false"
        out += ",\"localAddress\":"
        return out
    }

    /// `text` as a JSON string: appended whole when no byte needs an escape (a verdict's
    /// text is made of validated values), else escaped.
    static func writeString<Out: TextOutput>(_ text: String, to out: inout Out) {
        var text = text
        let plain = text.withUTF8 { bytes in
            !bytes.contains { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }
        }
        guard plain else {
            var escaped = ""
            JSONValue.writeString(text, to: &escaped)
            out += escaped
            return
        }
        out += "\""
        out += text
        out += "\""
    }

    /// One step as a JSON object, once per rule (a list's item is rendered per packet).
    private func stepJSON(_ step: Step) -> String {
        let key = step.entry * Hook.allCases.count + Hook.allCases.firstIndex(of: step.hook)!
        if step.item == nil, let cached = jsonCache[key] { return cached }
        let rule = entry(step)
        let line = iptables(step)
        let value = JSONValue.object([
            ("hook", .string(step.hook.rawValue)),
            ("table", .string(step.table.rawValue)),
            ("chain", .string(step.chain.iptablesName)),
            ("iptables", line.isEmpty ? .null : .string(line)),
            ("nft", .string(rule.nft)),
            ("from", .array(from(rule).map(JSONValue.string))),
        ]).serialized
        if step.item == nil { jsonCache[key] = value }
        return value
    }
}
