// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "CustomerLifecycleCluster",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Collectives", targets: ["Collectives"]),
        .library(name: "CollectivesMPI", targets: ["CollectivesMPI"]),
        .library(name: "Tensors", targets: ["Tensors"]),
        .library(name: "Models", targets: ["Models"]),
        .library(name: "ModelMetrics", targets: ["ModelMetrics"]),
        .library(name: "CustomerData", targets: ["CustomerData"]),
        .library(name: "Checkpoints", targets: ["Checkpoints"]),
        .library(name: "Training", targets: ["Training"]),
        .library(name: "Scoring", targets: ["Scoring"]),
        .library(name: "ScoringService", targets: ["ScoringService"]),
        .library(name: "Reporting", targets: ["Reporting"]),
        .library(name: "RunFiles", targets: ["RunFiles"]),
        .executable(name: "clm-bench", targets: ["clm-bench"]),
        .executable(name: "clm-data", targets: ["clm-data"]),
        .executable(name: "clm-coordinator", targets: ["clm-coordinator"]),
        .executable(name: "clm-worker", targets: ["clm-worker"]),
        .executable(name: "clm-score", targets: ["clm-score"]),
        .executable(name: "clm-score-mpi", targets: ["clm-score-mpi"]),
        .executable(name: "clm-report", targets: ["clm-report"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.5.0"),
        // Hummingbird's own transport: the service adds a channel handler to each connection.
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.25.0"),
        // Tests only: reads the service's OpenAPI document as a client generator would, and validates it.
        .package(url: "https://github.com/mattpolzin/OpenAPIKit", from: "6.4.0"),
        // The ONNX export's protobuf messages (generated code committed; no build plugin).
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    ],
    targets: [
        // MARK: System libraries
        .systemLibrary(
            name: "CMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]
        ),
        .systemLibrary(
            name: "CBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        .systemLibrary(
            name: "CXGBoost",
            pkgConfig: "xgboost",
            providers: [.apt(["libxgboost-dev"])]
        ),

        // MARK: Libraries
        // The Communicator protocol, its one-process and thread-backed in-process implementations,
        // and the steps ranks take together; no MPI, so data, training and scoring code links none.
        .target(name: "Collectives", dependencies: ["BitMixing"]),
        // The MPI world as a Communicator, its watchdog, and how a tool runs one step on every rank.
        .target(name: "CollectivesMPI", dependencies: ["CMPI", "Collectives"]),
        // SplitMix64 and FNV-1a: the one generator and checksum every module shares.
        .target(name: "BitMixing"),
        .target(name: "Tensors", dependencies: ["CBLAS", "BitMixing"]),
        // The scoring LSTM's fused step for AVX2 and AVX-512, chosen at run time (see its header).
        .target(name: "CForwardKernels"),
        // The training LSTM's element-wise step kernels, per instruction set (as CForwardKernels).
        .target(name: "CTrainingKernels"),
        .target(name: "Models", dependencies: ["Tensors", "BitMixing", "Checkpoints", "CForwardKernels", "CTrainingKernels"]),
        // Not "Metrics": swift-metrics (under Hummingbird) owns that module name, and SwiftPM
        // needs target names unique across the package graph.
        .target(name: "ModelMetrics", dependencies: ["BitMixing"], path: "Sources/Metrics"),
        // Metrics whose inputs stay on the ranks that hold them: a sample sort over the ranks for
        // the exact ranking metrics, and Poisson bootstrap weights every rank draws alone.
        .target(name: "DistributedMetrics", dependencies: ["BitMixing", "Collectives", "ModelMetrics"]),
        .target(name: "CMemoryHints"),
        .target(name: "CustomerData", dependencies: ["Collectives", "Tensors", "CMemoryHints"]),
        // BG/NBD, Gamma-Gamma and a logistic regression: the classical yardsticks every LSTM run
        // is reported next to. Pure Swift on Foundation.
        .target(name: "Baselines"),
        // XGBoost through its C API: the gradient boosting baseline, the one churn teams ship.
        .target(name: "GradientBoosting", dependencies: ["CXGBoost"]),
        // The strict JSON parser for what must not be read loosely: safetensors headers, manifests
        // and the service's request bodies. Its own module, so the service takes it without
        // the checkpoint store.
        .target(name: "StrictJSON"),
        .target(name: "Checkpoints", dependencies: ["StrictJSON", .product(name: "Crypto", package: "swift-crypto")]),
        // The files a run leaves for others to read (metrics log, test predictions, scores,
        // scoring summary, the manifest's model configuration): one type each writes and reads
        // it. No MPI and no training code, so the report and the scorer read them anywhere.
        .target(name: "RunFiles", dependencies: ["Checkpoints", "CustomerData", "Models"]),
        .target(
            name: "Training",
            dependencies: ["BitMixing", "Collectives", "Models", "ModelMetrics", "CustomerData", "Checkpoints", "Tensors", "Baselines", "GradientBoosting", "DistributedMetrics", "RunFiles", "Yams"]
        ),
        // Scoring must not link MPI: it serves on machines without an MPI runtime.
        .target(
            name: "Scoring",
            dependencies: ["Collectives", "Models", "CustomerData", "Checkpoints", "RunFiles", "Tensors", "CForwardKernels", "Yams"]
        ),
        // openapi.json is the service's contract, compiled into the binary (served at /openapi.json)
        // so that a copied executable needs no resource bundle beside it.
        .target(
            name: "ScoringService",
            dependencies: [
                "Scoring", "Checkpoints", "CustomerData", "CMemoryHints", "StrictJSON",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
            ],
            resources: [.embedInCode("openapi.json")]
        ),
        // The LSTM checkpoint as an ONNX model. Schema/ holds the ONNX messages it writes, from which
        // Generated/ was made (scripts/generate-onnx-proto.sh).
        .target(
            name: "ONNXExport",
            dependencies: ["Scoring", "Models", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            exclude: ["Schema"]
        ),
        // The client side of the service: a small loopback HTTP client and the load generator.
        .target(name: "ScoringLoad"),
        // Reads a finished run's files only: no MPI, so a report can be made anywhere.
        .target(name: "Reporting", dependencies: ["BitMixing", "ModelMetrics", "Checkpoints", "RunFiles", "TextFormatting"]),
        .target(name: "Benchmarks", dependencies: ["Collectives", "CollectivesMPI", "CMPI", "Models", "Tensors", "CustomerData", "Scoring"]),
        // Numbers as the tools and the report print them.
        .target(name: "TextFormatting"),
        // The tools' one error wrapper.
        .target(
            name: "ToolSupport",
            dependencies: [.product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // The batch scoring flags and report that clm-score batch and clm-score-mpi share.
        .target(
            name: "BatchScoringArguments",
            dependencies: [
                "Scoring", "Checkpoints", "CustomerData", "EventFileArguments", "RunFiles", "Tensors",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The event-file flags the data and scoring tools share.
        .target(
            name: "EventFileArguments",
            dependencies: ["CustomerData", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),

        // MARK: Executables (thin: parse arguments, call a library)
        .executableTarget(
            name: "clm-bench",
            dependencies: [
                "Benchmarks", "Models", "Scoring",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        .executableTarget(
            name: "clm-data",
            dependencies: [
                "CustomerData", "CollectivesMPI", "Collectives", "EventFileArguments", "TextFormatting", "ToolSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        .executableTarget(
            name: "clm-coordinator",
            dependencies: [
                "Training", "Collectives", "CollectivesMPI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(name: "clm-worker", dependencies: ["Training", "Collectives", "CollectivesMPI"]),

        .executableTarget(
            name: "clm-score",
            dependencies: [
                "Scoring", "ScoringService", "ScoringLoad", "CustomerData", "Checkpoints", "Tensors", "EventFileArguments", "ToolSupport",
                "BatchScoringArguments", "ONNXExport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Batch scoring under mpirun. A separate binary, so that clm-score never links MPI.
        .executableTarget(
            name: "clm-score-mpi",
            dependencies: [
                "Scoring", "BatchScoringArguments", "Collectives", "CollectivesMPI", "CustomerData", "ToolSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "clm-report",
            dependencies: [
                "Reporting", "Checkpoints", "ToolSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // MARK: Tests
        .testTarget(name: "CollectivesTests", dependencies: ["Collectives", "CollectivesMPI"]),
        .testTarget(name: "MetricsTests", dependencies: ["TestSupport", "ModelMetrics"]),
        .testTarget(name: "CheckpointsTests", dependencies: ["TestSupport", "Checkpoints"]),
        .testTarget(name: "RunFilesTests", dependencies: ["RunFiles", "Checkpoints", "Models"]),
        .testTarget(
            name: "ONNXExportTests",
            dependencies: ["ONNXExport", "ScoringTestSupport", "Scoring", "Models", .product(name: "SwiftProtobuf", package: "swift-protobuf")]
        ),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "Collectives", "Scoring", "Models", "CustomerData", "Checkpoints"]),
        .testTarget(name: "BaselinesTests", dependencies: ["TestSupport", "Baselines", "GradientBoosting"], resources: [.copy("Fixtures")]),
        // Training too: the comparison is tested on runs trained for real, the files as training writes them.
        .testTarget(
            name: "ReportingTests",
            dependencies: ["TestSupport", "Reporting", "ModelMetrics", "Checkpoints", "TextFormatting", "Training", "Collectives", "CustomerData"]
        ),
        .testTarget(
            name: "ScoringTests",
            dependencies: ["TestSupport", "ScoringTestSupport", "Collectives", "Scoring", "ScoringService", "ScoringLoad", "Models", "CustomerData", "Checkpoints", "Tensors", "EventFileArguments",
                           .product(name: "HummingbirdTesting", package: "hummingbird"),
                           .product(name: "OpenAPIKit", package: "OpenAPIKit")]
        ),
        .testTarget(
            name: "CustomerDataTests",
            dependencies: ["TestSupport", "Collectives", "CustomerData", "Tensors"],
            resources: [.copy("Samples")]
        ),
        // Counts the heap allocations of a thread, so tests can hold hot paths to none.
        .target(name: "AllocationCounting", path: "Tests/AllocationCounting"),
        .testTarget(
            name: "ModelsTests",
            dependencies: ["Models", "Tensors", "Collectives", "CustomerData", "AllocationCounting"],
            resources: [.copy("Fixtures")]
        ),
        // Runs under mpirun at several world sizes; scripts/test.sh launches it and checks that
        // every rank reported.
        .target(name: "RankTesting", dependencies: ["Collectives"], path: "Tests/RankTesting"),
        .target(name: "TestSupport", dependencies: ["BitMixing"], path: "Tests/TestSupport"),
        // A synthetic dataset with untrained LSTM checkpoints, for the scoring tests and the
        // multi-rank scoring check.
        .target(
            name: "ScoringTestSupport",
            dependencies: ["TestSupport", "Scoring", "Models", "Checkpoints", "CustomerData", "Tensors"],
            path: "Tests/ScoringTestSupport"
        ),
        // The checks every Communicator must pass at any world size, with the multi-rank import
        // and batch scoring: run under mpirun by clm-multirank-tests and on threads by swift test.
        .target(
            name: "MultiRankChecks",
            dependencies: ["Baselines", "Collectives", "CustomerData", "DistributedMetrics", "ModelMetrics", "RankTesting", "Scoring",
                           "ScoringTestSupport", "Tensors", "TestSupport"],
            path: "Tests/MultiRankChecks"
        ),
        .testTarget(name: "InProcessRanksTests", dependencies: ["Collectives", "MultiRankChecks", "RankTesting"]),
        .executableTarget(
            name: "clm-multirank-tests",
            dependencies: ["Collectives", "CollectivesMPI", "MultiRankChecks", "RankTesting"],
            path: "Tests/MultiRank"
        ),
        .executableTarget(
            name: "clm-training-tests",
            dependencies: ["Training", "CustomerData", "Collectives", "CollectivesMPI", "Models", "Tensors", "RankTesting"],
            path: "Tests/TrainingMultiRank"
        ),
    ]
)
