//! Unit tests of the expansion on `proc_macro2` tokens. Where the errors
//! point is checked by the trybuild cases in `ui-tests`, which see real
//! spans.

use proc_macro2::TokenStream;
use quote::quote;

use crate::expand_with_errors;

fn train() -> TokenStream {
    quote! {
        /// Trains.
        pub fn train(fabric: &mut Fabric) -> Result<(), fabric::Error> {
            let _ = fabric;
            Ok(())
        }
    }
}

/// The messages of every error, in order.
fn errors_for(args: TokenStream, item: TokenStream) -> Vec<String> {
    match expand_with_errors(args, item).1 {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_iter().map(|e| e.to_string()).collect(),
    }
}

fn errors(args: TokenStream) -> Vec<String> {
    errors_for(args, train())
}

/// The one error of `args`, which must have exactly one.
fn error(args: TokenStream) -> String {
    let mut errors = errors(args);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors.remove(0)
}

/// The generated code, as a string without spaces, checking there is no
/// error.
fn code(args: TokenStream, item: TokenStream) -> String {
    let (output, errors) = expand_with_errors(args, item);
    if let Err(errors) = errors {
        panic!("unexpected errors: {errors}");
    }
    output.to_string().replace(' ', "")
}

#[test]
fn minimal_configuration_builds_the_wrapper() {
    let code = code(quote!(accelerator = "cpu"), train());
    assert!(
        code.contains("pubfntrain()->Result<(),fabric::Error>{"),
        "{code}"
    );
    assert!(
        code.contains("fn__fabric_train(fabric:&mutFabric)->Result<(),fabric::Error>"),
        "{code}"
    );
    assert!(code.contains("::fabric::__private::launch(::fabric::Fabric::builder().accelerator(::fabric::options::Value::Str(::std::string::String::from(\"cpu\"))),__fabric_train)"), "{code}");
    assert!(
        code.contains("#[doc=r\"Trains.\"]") || code.contains("///Trains."),
        "{code}"
    );
}

#[test]
fn no_argument_is_a_default_builder() {
    let code = code(TokenStream::new(), train());
    assert!(
        code.contains("launch(::fabric::Fabric::builder(),__fabric_train)"),
        "{code}"
    );
}

/// Each literal is handed to the builder as the typed options hold it, in
/// canonical form.
#[test]
fn every_literal_form_becomes_a_value() {
    let code = code(
        quote!(
            devices = [1, 4],
            num_nodes = 1,
            precision = 64,
            strategy = "auto",
            accelerator = "cuda"
        ),
        train(),
    );
    assert!(
        code.contains(
            ".accelerator(::fabric::options::Value::Str(::std::string::String::from(\"cuda\")))"
        ),
        "{code}"
    );
    assert!(
        code.contains(
            ".strategy(::fabric::options::Value::Str(::std::string::String::from(\"auto\")))"
        ),
        "{code}"
    );
    assert!(
        code.contains(".devices(::fabric::options::Value::List(::std::vec![1i64,4i64]))"),
        "{code}"
    );
    assert!(
        code.contains(".num_nodes(::fabric::options::Value::Int(1i64))"),
        "{code}"
    );
    assert!(
        code.contains(
            ".precision(::fabric::options::Value::Str(::std::string::String::from(\"64-true\")))"
        ),
        "{code}"
    );

    let code = code_of(quote!(devices = -1));
    assert!(
        code.contains(".devices(::fabric::options::Value::Int(-1i64))"),
        "{code}"
    );
    // `None` and `0` both mean the CPU.
    let code = code_of(quote!(devices = None));
    assert!(
        code.contains(".devices(::fabric::options::Value::Int(0i64))"),
        "{code}"
    );
    let code = code_of(quote!(devices = "1, 4", accelerator = "gpu"));
    assert!(
        code.contains(".devices(::fabric::options::Value::List(::std::vec![1i64,4i64]))"),
        "{code}"
    );
    let code = code_of(quote!(
        strategy = " DDP_Find_Unused_Parameters_True ",
        precision = "bf16"
    ));
    assert!(
        code.contains(".strategy(::fabric::options::Value::Str(::std::string::String::from(\"ddp_find_unused_parameters_true\"))).precision(::fabric::options::Value::Str(::std::string::String::from(\"bf16-mixed\")))"),
        "{code}"
    );
}

fn code_of(args: TokenStream) -> String {
    code(args, train())
}

#[test]
fn expressions_are_passed_in_order() {
    let code = code_of(quote!(
        callbacks = [A::default(), B],
        loggers = L::new("x"),
        plugins = [MyCluster],
    ));
    assert!(
        code.contains(
            ".plugin(__fabric_plugins.0).callback(A::default()).callback(B).logger(L::new(\"x\"))"
        ),
        "{code}"
    );
    // The plugin is evaluated once, before the builder, and its kind checked.
    assert!(
        code.contains("let__fabric_plugins=(MyCluster,);let__fabric_kinds=(::fabric::__private::plugin_kind!(__fabric_plugins.0),);::fabric::__private::check_runnable(__fabric_kinds.0);::fabric::__private::launch("),
        "{code}"
    );
    let code = code_of(quote!(callbacks = []));
    assert!(code.contains("builder(),__fabric_train"), "{code}");
}

#[test]
fn plugins_are_checked_against_each_other_and_precision() {
    let code = code_of(quote!(plugins = [A, B, C]));
    for (earlier, later) in [(0, 1), (0, 2), (1, 2)] {
        let check = format!(
            "::fabric::__private::check_second_plugin(__fabric_kinds.{earlier},__fabric_kinds.{later});"
        );
        assert_eq!(code.matches(&check).count(), 1, "{check} in {code}");
    }
    assert_eq!(code.matches("check_second_plugin").count(), 3, "{code}");
    assert!(!code.contains("check_beside_precision_option"), "{code}");

    let code = code_of(quote!(precision = "64-true", plugins = P));
    assert!(
        code.contains("::fabric::__private::check_beside_precision_option(__fabric_kinds.0);"),
        "{code}"
    );
    // An invalid `precision` is reported on its own, without adding a check.
    let (output, errors) = expand_with_errors(quote!(precision = "64-truee", plugins = P), train());
    assert!(errors.is_err());
    assert!(!output.to_string().contains("check_beside_precision_option"));

    let code = code_of(quote!(accelerator = "cpu"));
    assert!(!code.contains("__fabric_plugins"), "{code}");
}

#[test]
fn crate_path_replaces_fabric() {
    let code = code_of(quote!(crate = "my::reexport", accelerator = "cpu"));
    assert!(code.contains("my::reexport::__private::launch(my::reexport::Fabric::builder().accelerator(my::reexport::options::Value::Str"), "{code}");
    assert!(!code.contains("::fabric::"), "{code}");
    assert_eq!(
        error(quote!(crate = my::reexport)),
        "`crate` takes the path of the fabric crate as a string, such as `crate = \"my_crate::fabric\"`"
    );
    assert!(error(quote!(crate = "not a path")).starts_with("\"not a path\" is not a path"));
}

#[test]
fn unknown_keys_suggest_the_closest() {
    let message = error(quote!(precison = "64-true"));
    assert!(
        message.starts_with("unknown option `precison`: did you mean `precision`?"),
        "{message}"
    );
    let message = error(quote!(krate = "x"));
    assert!(
        message.starts_with("unknown option `krate`: did you mean `crate`?"),
        "{message}"
    );
    let message = error(quote!(zzz = 1));
    assert!(
        message.starts_with("unknown option `zzz`; the options are"),
        "{message}"
    );
}

#[test]
fn repeated_keys_are_errors() {
    assert_eq!(
        error(quote!(devices = 1, devices = 2)),
        "`devices` set multiple times"
    );
    assert!(
        error(quote!(callbacks = A, callbacks = B)).starts_with("`callbacks` set multiple times")
    );
    assert_eq!(
        error(quote!(crate = "a", crate = "b")),
        "`crate` set multiple times"
    );
}

#[test]
fn values_must_be_literals_of_an_accepted_form() {
    assert_eq!(
        error(quote!(precision = 1.5)),
        "expected a string literal such as \"bf16-mixed\" or an integer literal such as 32, found the float literal `1.5`"
    );
    assert_eq!(
        error(quote!(accelerator = cpu)),
        "expected a string literal such as \"cpu\" or \"cuda\", found the identifier `cpu`; write `accelerator = \"cpu\"`"
    );
    let message = error(quote!(devices = N));
    assert!(
        message.starts_with("expected a literal, found the identifier `N`"),
        "{message}"
    );
    assert!(message.contains("such as `devices = 2`"), "{message}");
    assert!(
        message.contains("`Fabric::builder().devices(...)`"),
        "{message}"
    );
    let message = error(quote!(devices = [1, "a"]));
    assert_eq!(
        message,
        "expected a device index (an integer literal), found the string literal \"a\""
    );
    let message = error(quote!(accelerator = ["cpu"]));
    assert!(
        message.starts_with("expected a string literal such as \"cpu\""),
        "{message}"
    );
    let message = error(quote!(devices = 99999999999999999999));
    assert_eq!(message, "`99999999999999999999` does not fit in an i64");
}

#[test]
fn values_are_checked_by_fabric_options() {
    let message = error(quote!(strategy = "dpp"));
    assert!(
        message.starts_with("\"dpp\" is not a valid strategy: did you mean"),
        "{message}"
    );
    let message = error(quote!(precision = "bf16-mixd"));
    assert!(message.contains("did you mean `bf16-mixed`?"), "{message}");
    let message = error(quote!(accelerator = 1));
    assert!(
        message.starts_with("expected a string such as"),
        "{message}"
    );
    assert!(error(quote!(devices = -2)).contains("below -1"));
    assert!(error(quote!(devices = [1, 1])).contains("more than once"));
    assert!(error(quote!(devices = [])).contains("selects no device"));
    assert!(error(quote!(devices = "1, x")).contains("`x`, which is not a device index"));
    assert!(error(quote!(num_nodes = 0)).contains("not a number of nodes"));
}

#[test]
fn lightnings_strategy_names_are_checked() {
    assert!(errors(quote!(strategy = "ddp_find_unused_parameters_true")).is_empty());
    let message = error(quote!(strategy = "deepspeed_stage_3_offload_nvme"));
    assert!(
        message.starts_with(
            "the sharded strategy \"deepspeed_stage_3_offload_nvme\" is not available"
        ),
        "{message}"
    );
    let message = error(quote!(strategy = "ddp_find_unused_parameters_ture"));
    assert!(
        message.contains(": did you mean `ddp_find_unused_parameters_true`?"),
        "{message}"
    );
    // Lightning 2.6 registers no `model_parallel`; its class is still
    // recognised, and rejected for what it is.
    let message = error(quote!(strategy = "model_parallel"));
    assert!(
        message.starts_with("\"model_parallel\" is not a valid strategy"),
        "{message}"
    );
    let message = error(quote!(
        strategy = ModelParallelStrategy(tensor_parallel_size = 2)
    ));
    assert!(
        message.starts_with("the sharded strategy \"model_parallel\" is not available"),
        "{message}"
    );
}

/// The launcher of `#[fabric]`'s function: `launch_spawn` for `ddp_spawn`.
fn launcher(args: TokenStream) -> &'static str {
    let (output, _) = expand_with_errors(args, train());
    let output = output.to_string().replace(' ', "");
    match (
        output.contains("__private::launch_spawn("),
        output.contains("__private::launch("),
    ) {
        (true, false) => "launch_spawn",
        (false, true) => "launch",
        _ => panic!("one launcher expected in {output}"),
    }
}

#[test]
fn ddp_spawn_is_decided_from_the_typed_options() {
    assert_eq!(launcher(quote!(strategy = "ddp_spawn")), "launch_spawn");
    assert_eq!(launcher(quote!(strategy = " DDP_Spawn ")), "launch_spawn");
    assert_eq!(
        launcher(quote!(
            strategy = "ddp_spawn",
            accelerator = "cpu",
            devices = 2
        )),
        "launch_spawn"
    );
    for other in [
        quote!(strategy = "ddp"),
        quote!(strategy = "ddp_find_unused_parameters_true"),
        quote!(strategy = "auto"),
        quote!(strategy = DdpStrategy::new()),
        TokenStream::new(),
        // With an error, the options (and `ddp_spawn`) are left out.
        quote!(strategy = "ddp_spawn", devices = -2),
    ] {
        assert_eq!(launcher(other.clone()), "launch", "{other}");
    }

    // What is written does not decide: the typed options do.
    let cx = crate::ctxt::Ctxt::new();
    let mut config = crate::parse::parse_config(quote!(strategy = "ddp"), &cx);
    cx.check().unwrap();
    config.options.strategy = fabric_options::Strategy::DdpSpawn;
    let function = syn::parse2(train()).unwrap();
    let output = crate::generate::wrapper(function, &config, true)
        .to_string()
        .replace(' ', "");
    assert!(
        output.contains("__private::launch_spawn(::fabric::Fabric::builder().strategy(::fabric::options::Value::Str(::std::string::String::from(\"ddp_spawn\"))),__fabric_train)"),
        "{output}"
    );
}

#[test]
fn combinations_are_checked() {
    let message = error(quote!(accelerator = "cpu", strategy = "dp"));
    assert!(message.contains("use `strategy = \"ddp\"`"), "{message}");
    let message = error(quote!(accelerator = "cpu", precision = "16-mixed"));
    assert!(
        message.contains("use `precision = \"bf16-mixed\"`"),
        "{message}"
    );
    let message = error(quote!(accelerator = "gpu", devices = 0));
    assert!(message.contains("0 and None mean the CPU"), "{message}");
    let message = error(quote!(strategy = "single_device", devices = 2));
    assert!(
        message.contains("\"single_device\" runs on one device"),
        "{message}"
    );
}

#[test]
fn every_error_is_reported() {
    let errors = errors(quote!(
        accelerator = "cdua",
        precison = "64-true",
        devices = 1,
        devices = 2,
        strategy = "dpp",
        num_nodes = 0,
    ));
    assert_eq!(errors.len(), 5, "{errors:#?}");
    assert!(errors[0].contains("did you mean `cuda`"));
    assert!(errors[1].contains("did you mean `precision`"));
    assert!(errors[2].contains("`devices` set multiple times"));
    assert!(errors[3].contains("is not a valid strategy"));
    assert!(errors[4].contains("not a number of nodes"));
}

#[test]
fn malformed_arguments_do_not_hide_the_others() {
    let errors = errors(quote!(accelerator "cpu", precison = 1, devices =, strategy = "dpp"));
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert_eq!(errors[0], "expected `=` and a value after `accelerator`");
    assert!(errors[1].contains("did you mean `precision`"));
    assert_eq!(errors[2], "expected a value for `devices`");
    assert!(errors[3].contains("is not a valid strategy"));
    assert_eq!(
        errors_for(quote!(accelerator), train()),
        ["expected `=` and a value after `accelerator`"]
    );
    assert_eq!(
        errors_for(quote!(accelerator = "cpu" devices = 1), train()),
        ["expected `,` between options"]
    );
}

#[test]
fn signature_errors() {
    let args = || quote!(accelerator = "cpu");
    let one = |item: TokenStream| {
        let mut errors = errors_for(args(), item);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors.remove(0)
    };
    assert!(
        one(quote!(
            fn train() -> R {
                body()
            }
        ))
        .starts_with("a #[fabric] function takes the `Fabric` it trains with")
    );
    assert!(
        one(quote!(
            fn train(f: &mut Fabric, n: usize) -> R {
                body()
            }
        ))
        .starts_with("unexpected parameter:")
    );
    assert!(
        one(quote!(
            fn train(f: &mut Fabric, n: usize, m: u8) -> R {
                body()
            }
        ))
        .starts_with("unexpected parameters:")
    );
    assert!(
        one(quote!(
            fn train(f: &Fabric) -> R {
                body()
            }
        ))
        .starts_with("the `Fabric` is borrowed mutably")
    );
    assert!(
        one(quote!(
            fn train(f: Fabric) -> R {
                body()
            }
        ))
        .starts_with("expected `&mut Fabric`, found `Fabric`")
    );
    assert!(
        one(quote!(
            fn train(f: &mut u32) -> R {
                body()
            }
        ))
        .starts_with("expected `&mut Fabric`, found `&mut u32`")
    );
    assert!(
        one(quote!(
            fn train(&mut self) -> R {
                body()
            }
        ))
        .starts_with("a #[fabric] function cannot be a method")
    );
    assert!(
        one(quote!(
            fn train(f: &mut Fabric) {
                body()
            }
        ))
        .starts_with("missing return type: a #[fabric] function returns a `Result`")
    );
    assert!(
        one(quote!(
            async fn train(f: &mut Fabric) -> R {
                body()
            }
        ))
        .contains("cannot be `async`")
    );
    assert!(
        one(quote!(
            const fn train(f: &mut Fabric) -> R {
                body()
            }
        ))
        .contains("cannot be `const`")
    );
    assert!(
        one(quote!(
            unsafe fn train(f: &mut Fabric) -> R {
                body()
            }
        ))
        .contains("cannot be `unsafe`")
    );
    assert!(
        one(quote!(
            extern "C" fn train(f: &mut Fabric) -> R {
                body()
            }
        ))
        .contains("cannot have an ABI")
    );
    assert!(
        one(quote!(
            fn train<T>(f: &mut Fabric) -> R {
                body()
            }
        ))
        .contains("cannot be generic")
    );
    assert!(
        one(quote!(
            fn train(f: &mut fabric::Fabric) -> R
            where
                R: Sized,
            {
                body()
            }
        ))
        .contains("`where` clause")
    );
    assert!(
        errors_for(
            args(),
            quote!(
                fn train(f: &mut ::my::Fabric) -> R {
                    body()
                }
            )
        )
        .is_empty()
    );
    assert!(
        errors_for(
            args(),
            quote!(
                fn train(_: &'static mut (Fabric)) -> R {
                    body()
                }
            )
        )
        .is_empty()
    );
}

#[test]
fn on_error_the_function_is_kept_with_its_body() {
    // An attribute error: the wrapper, with no option in the builder.
    let (output, errors) = expand_with_errors(quote!(accelerator = "cdua", callbacks = C), train());
    assert!(errors.is_err());
    let output = output.to_string().replace(' ', "");
    assert!(
        output.contains("launch(::fabric::Fabric::builder().callback(C),__fabric_train)"),
        "{output}"
    );

    // A signature error: the body is nested under the signature callers expect.
    let (output, errors) = expand_with_errors(
        quote!(accelerator = "cpu"),
        quote!(
            pub fn train(fabric: &mut Fabric, n: usize) -> R {
                body(n)
            }
        ),
    );
    assert!(errors.is_err());
    let output = output.to_string().replace(' ', "");
    assert!(output.contains("pubfntrain()->R{#[allow(dead_code)]fn__fabric_train(fabric:&mutFabric,n:usize)->R{body(n)}::core::unreachable!()}"), "{output}");

    // A method is left as it is.
    let method = quote!(
        fn train(&self) -> R {
            body()
        }
    );
    let (output, _) = expand_with_errors(TokenStream::new(), method.clone());
    assert_eq!(output.to_string(), method.to_string());
}

#[test]
fn the_attribute_goes_on_a_function() {
    let item = quote!(
        struct Config {
            a: u32,
        }
    );
    let (output, errors) = expand_with_errors(quote!(accelerator = "cpu"), item.clone());
    assert_eq!(output.to_string(), item.to_string());
    let errors: Vec<_> = errors
        .unwrap_err()
        .into_iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        errors,
        [
            "#[fabric] goes on the training function, `fn train(fabric: &mut Fabric) -> Result<..>`, not on a struct"
        ]
    );
}
