// swift-tools-version:6.1
import PackageDescription

// Layers, each its own target; dependencies point down only (no back-edges):
//
//   MeshModel      pure values: ports, CIDRs, marks, owners, tables, chains, rules, the Plan (one
//                  IR for both families and both backends), the CaptureConfig the planner takes,
//                  the nft table layout
//     ↑
//   MeshConfig     a configuration source: Istio's flags (the flag table, the argv parser) and
//                  environment → typed Settings (strict, parse once); takes argv/env as values
//   MeshPlanner    CaptureConfig → Plan (pure; MeshModel only)
//   MeshRender     Plan → iptables-restore text, nft script, JSON (pure)
//   MeshExplain    packets walked through a plan as a backend holds it (or through live rules
//                  read back by the CLI): path, verdict, the settings behind each rule (pure)
//   MeshCNI        another configuration source: the CNI protocol (request, result, error JSON),
//                  the plugin's config keys and pod annotations → the same ConfigInput; editing
//                  the node's .conflist (pure)
//     ↑
//   MeshSystem     the OS: processes, namespaces, locks, netlink sockets, routes, files
//                  (with CMeshShims: setns, pipe2; CRtnetlink: the kernel's rtnetlink constants)
//   MeshIptables   applier: live state (iptables-save) → converging iptables-restore
//   MeshNetlink    applier: plan → one nf_tables batch over libnftnl/libmnl (CNftnl), read back
//   MeshStats      the installed rules' counters joined with explain's reading of them: per
//                  capture path, attributed; text, JSON, Prometheus; the node audit's verdicts
//     ↑
//   MeshRuntime    what a run does: install (backend choice, applyPlan), cleanup, verify, the CNI
//                  calls (ADD with rollback, CHECK, DEL, …) and the node's conflist; one resolve
//                  entry; one table error class → exit status and CNI code. Every effect goes
//                  through SystemBoundary (live, or fakes in MeshRuntimeTests: no root needed)
//     ↑
//   meshinit       the CLI (swift-argument-parser): argument parsing, output and exit codes; the
//                  only code that reads argv and the environment (CArguments captures argv), one
//                  file per command
let package = Package(
    name: "meshinit",
    products: [
        .executable(name: "meshinit", targets: ["meshinit"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
    ],
    targets: [
        .target(name: "MeshModel"),
        .target(name: "MeshConfig", dependencies: ["MeshModel"]),
        .target(name: "MeshPlanner", dependencies: ["MeshModel"]),
        .target(name: "MeshRender", dependencies: ["MeshModel"]),
        .target(name: "MeshExplain", dependencies: ["MeshModel", "MeshRender"]),
        .target(name: "MeshCNI", dependencies: ["MeshModel", "MeshConfig"]),
        .target(name: "CMeshShims"),
        .target(name: "CRtnetlink"),
        .target(name: "MeshSystem", dependencies: ["MeshModel", "CMeshShims", "CRtnetlink"]),
        .target(name: "MeshIptables", dependencies: ["MeshModel", "MeshRender", "MeshSystem"]),
        .systemLibrary(
            name: "CNftnl",
            path: "Sources/CNftnl",
            pkgConfig: "libnftnl libmnl",
            providers: [.apt(["libnftnl-dev", "libmnl-dev"])]
        ),
        .target(name: "MeshNetlink", dependencies: ["CNftnl", "MeshModel", "MeshRender", "MeshSystem"]),
        .target(
            name: "MeshRuntime",
            dependencies: [
                "MeshModel", "MeshConfig", "MeshPlanner", "MeshRender", "MeshCNI", "MeshSystem", "MeshIptables",
                "MeshNetlink",
            ]
        ),
        .target(
            name: "MeshStats", dependencies: ["MeshModel", "MeshRender", "MeshExplain", "MeshIptables", "MeshNetlink"]),
        .executableTarget(
            name: "meshinit",
            dependencies: [
                "MeshModel", "MeshConfig", "MeshPlanner", "MeshRender", "MeshSystem", "MeshIptables", "MeshNetlink",
                "MeshCNI", "MeshExplain", "MeshRuntime", "MeshStats", "CArguments",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            exclude: ["CArguments"],
            plugins: ["GitRevision"]
        ),
        .target(name: "CArguments", path: "Sources/meshinit/CArguments"),
        .plugin(name: "GitRevision", capability: .buildTool()),
        // Real-kernel test helpers shared by the test targets (not shipped).
        .target(name: "MeshTestKit", dependencies: ["MeshSystem"], path: "Tests/MeshTestKit"),
        .testTarget(name: "MeshModelTests", dependencies: ["MeshModel"]),
        .testTarget(
            name: "MeshCNITests",
            dependencies: [
                "MeshCNI", "MeshConfig", "MeshModel", "MeshPlanner", "MeshRender",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
        .testTarget(
            name: "MeshRuntimeTests",
            dependencies: [
                "MeshRuntime", "MeshCNI", "MeshConfig", "MeshModel", "MeshPlanner", "MeshRender", "MeshSystem",
                "MeshIptables", "MeshNetlink", "MeshTestKit", "CRtnetlink",
            ]
        ),
        .testTarget(name: "MeshSystemTests", dependencies: ["MeshSystem", "MeshModel", "CRtnetlink"]),
        .testTarget(
            name: "MeshCLITests",
            dependencies: [
                "meshinit", "MeshConfig",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
        .testTarget(
            name: "MeshIptablesTests",
            dependencies: [
                "MeshIptables", "MeshPlanner", "MeshConfig", "MeshModel", "MeshRender", "MeshSystem", "MeshTestKit",
            ]
        ),
        .testTarget(
            name: "MeshNetlinkTests",
            dependencies: ["MeshNetlink", "MeshPlanner", "MeshConfig", "MeshModel", "MeshRender", "MeshTestKit"]
        ),
        .testTarget(
            name: "MeshConfigTests",
            dependencies: [
                "MeshConfig", "MeshModel",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
        .testTarget(name: "MeshPlannerTests", dependencies: ["MeshPlanner", "MeshConfig", "MeshModel"]),
        .testTarget(
            name: "MeshExplainTests",
            dependencies: [
                "MeshExplain", "MeshPlanner", "MeshConfig", "MeshModel", "MeshRender", "MeshIptables", "MeshCNI",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
        .testTarget(
            name: "MeshStatsTests",
            dependencies: ["MeshStats", "MeshExplain", "MeshIptables", "MeshPlanner", "MeshConfig", "MeshModel"]
        ),
        .testTarget(
            name: "MeshRenderTests",
            dependencies: [
                "MeshRender", "MeshPlanner", "MeshConfig", "MeshModel", "MeshTestKit", "MeshIptables", "MeshNetlink",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            exclude: ["Goldens"]
        ),
    ]
)
