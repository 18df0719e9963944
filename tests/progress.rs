//! The progress bar: drawn with steps per second and the latest metrics when
//! the output is a terminal, hidden when it is not or when turned off.

use std::process::Command;

use fabric::Fabric;

const CHILD: &str = "FABRIC_PROGRESS_CHILD";

/// In the child: a bar over 40 steps with a logged loss.
fn child() {
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    let progress = fabric.progress(40);
    for step in 0..40u64 {
        fabric.log("loss", 1.0 / (step + 1) as f64).unwrap();
        progress.inc(1);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    progress.finish();
    println!("hidden={}", progress.is_hidden());
}

fn run_child(command: &mut Command) -> (String, String) {
    let output = command.env(CHILD, "1").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

fn test_args() -> [&'static str; 4] {
    [
        "--exact",
        "the_bar_draws_on_a_terminal_only",
        "--nocapture",
        "--test-threads=1",
    ]
}

#[test]
fn the_bar_draws_on_a_terminal_only() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    let exe = std::env::current_exe().unwrap();

    // Output to pipes: hidden, nothing drawn.
    let (stdout, stderr) = run_child(Command::new(&exe).args(test_args()));
    assert!(stdout.contains("hidden=true"), "{stdout}");
    assert!(!stderr.contains("steps/s"), "{stderr}");

    // On a terminal (a pseudo-terminal made by util-linux's `script`): the
    // bar, its rate and the latest loss.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("`script` (util-linux) is missing: the terminal case is not checked");
        return;
    }
    let command = format!("{} {}", exe.display(), test_args().join(" "));
    let (stdout, _) = run_child(Command::new("script").args(["-qec", &command, "/dev/null"]));
    assert!(stdout.contains("hidden=false"), "{stdout}");
    assert!(stdout.contains("40/40"), "{stdout}");
    assert!(stdout.contains("steps/s"), "{stdout}");
    assert!(stdout.contains("loss=0.0250"), "{stdout}");
}

#[test]
fn the_bar_can_be_turned_off_and_shows_the_latest_metrics() {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .progress_bar(false)
        .build()
        .unwrap();
    let progress = fabric.progress(10);
    assert!(progress.is_hidden());
    assert_eq!(progress.message(), "");
    fabric
        .log_dict([("loss", 0.5), ("acc", 0.25)], None)
        .unwrap();
    fabric.log("loss", 1.5e-6).unwrap();
    fabric.log("lr", 3e5).unwrap();
    progress.inc(3);
    progress.set_position(5);
    assert_eq!(progress.position(), 5);
    assert_eq!(progress.message(), "loss=1.500e-6 acc=0.2500 lr=3.000e5");
    progress.finish();
}
